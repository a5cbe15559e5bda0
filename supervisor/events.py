"""The daemon's event stream, shaped as Docker's /events messages.

Subscribers get a bounded memory channel. One that falls behind is cut off,
never waited for: its channel is closed and its stream ends with a final
error message, so the daemon never slows down for a slow reader. A short
history lets `since` replay what happened just before a client subscribed.
``counts`` keeps how many events of each kind were published, for metrics:
the kind is the action up to any colon, so "exec_create: ls -l" and
"health_status: healthy" count as exec_create and health_status.
"""

import collections
import time

import structlog
import trio

log = structlog.get_logger()

HISTORY_EVENTS = 1024
SUBSCRIBER_BUFFER = 256


class EventBus:
    def __init__(self):
        self.history: collections.deque[dict] = collections.deque(maxlen=HISTORY_EVENTS)
        self._subscribers: set[trio.MemorySendChannel] = set()
        self.dropped = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self._last_ns = 0

    def publish(self, action: str, actor_id: str, attributes: dict, kind="container"):
        # Strictly increasing time stamps keep the stream ordered for clients
        # that sort by timeNano.
        now_ns = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = now_ns
        event = {
            "status": action,
            "id": actor_id,
            "from": attributes.get("image", ""),
            "Type": kind,
            "Action": action,
            "Actor": {"ID": actor_id, "Attributes": attributes},
            "scope": "local",
            "time": now_ns // 1_000_000_000,
            "timeNano": now_ns,
        }
        self.history.append(event)
        self.counts[action.partition(":")[0]] += 1
        for sub in list(self._subscribers):
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
                sub.overflowed = True
                sub.send.close()
                self._subscribers.discard(sub)
                log.warning("event_subscriber_dropped", reason="fell behind",
                            buffer=SUBSCRIBER_BUFFER)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(sub)
        return event

    def subscribe(self) -> "Subscription":
        send, receive = trio.open_memory_channel(SUBSCRIBER_BUFFER)
        sub = Subscription(send, receive)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: "Subscription") -> None:
        self._subscribers.discard(sub)
        sub.receive.close()


class Subscription:
    def __init__(self, send, receive):
        self.send = send
        self.receive = receive
        self.overflowed = False

    def final_error(self) -> dict:
        return {
            "status": "error",
            "Type": "daemon",
            "Action": "error",
            "Actor": {"ID": "", "Attributes": {}},
            "scope": "local",
            "message": f"this events stream fell more than {SUBSCRIBER_BUFFER} events "
            "behind and was closed; reconnect with since= to catch up",
            "time": time.time_ns() // 1_000_000_000,
            "timeNano": time.time_ns(),
        }
