import trio

from supervisor.events import SUBSCRIBER_BUFFER, EventBus


async def test_events_carry_docker_fields_and_strictly_increasing_times():
    bus = EventBus()
    first = bus.publish("start", "abc", {"name": "web", "image": "busybox:test"})
    second = bus.publish("die", "abc", {"name": "web", "exitCode": "0"})
    assert first["Actor"] == {"ID": "abc", "Attributes": {"name": "web", "image": "busybox:test"}}
    assert (first["Type"], first["Action"], first["status"], first["from"]) == (
        "container", "start", "start", "busybox:test")
    assert second["timeNano"] > first["timeNano"]


async def test_a_subscriber_receives_what_is_published_after_it_subscribed():
    bus = EventBus()
    bus.publish("create", "a", {})
    sub = bus.subscribe()
    bus.publish("start", "a", {})
    assert sub.receive.receive_nowait()["Action"] == "start"


async def test_a_slow_subscriber_is_cut_off_without_blocking_the_publisher():
    bus = EventBus()
    slow = bus.subscribe()
    fast = bus.subscribe()
    with trio.fail_after(1):
        for n in range(SUBSCRIBER_BUFFER + 10):
            bus.publish("start", str(n), {})
            fast.receive.receive_nowait()
    assert slow.overflowed and not fast.overflowed
    received = [event async for event in slow.receive]
    assert len(received) == SUBSCRIBER_BUFFER
    assert "fell more than" in slow.final_error()["message"]
    assert bus.dropped == 1
