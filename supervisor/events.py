"""The daemon's event stream, shaped as Docker's /events messages.

Subscribers get a bounded memory channel; one that falls behind loses events
(counted) rather than slowing the daemon. A short history lets `since`
replay what happened just before a client subscribed.
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
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
                log.warning("event_dropped", action=action, reason="slow subscriber")
            except trio.BrokenResourceError:
                self._subscribers.discard(channel)
        return event

    def subscribe(self) -> trio.MemoryReceiveChannel:
        send, receive = trio.open_memory_channel(SUBSCRIBER_BUFFER)
        self._subscribers.add(send)
        return receive

    def unsubscribe(self, receive: trio.MemoryReceiveChannel) -> None:
        receive.close()
