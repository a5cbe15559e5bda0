"""Everything corrald exports to Prometheus, as one text exposition.

The daemon hands the exporter two read-only callables: one that lists its
containers as ``Target`` snapshots, one that gives how many events of each
kind it has published. A scrape takes that snapshot on the event loop,
where the daemon's records never change under it, then reads the cgroup
files and writes the exposition in a worker thread, so that reading many
containers' files holds the loop for no longer than the snapshot takes.
Scrapes run one at a time; a second one waits for the first.

Besides the per-container series (metrics.collector) and the daemon's
health (metrics.daemon), the exposition has prometheus-client's standard
process, platform and garbage-collector series.
"""

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import trio
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from .collector import ContainerCollector, Target
from .daemon import REQUEST_BUCKETS_S, Histogram, LoopLag

SUPERVISED_STATES = ("running", "restarting")
# Any other method a client sends is counted as "other": label values stay
# bounded whatever clients send.
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


@dataclass
class Snapshot:
    """What one scrape reports, copied from the daemon on its event loop."""

    targets: list[Target]
    events: dict[str, int]


class Exporter:
    """The registry corrald serves on GET /metrics, on the API socket and
    on its Prometheus address."""

    def __init__(self, targets: Callable[[], Iterable[Target]],
                 event_counts: Callable[[], Mapping[str, int]]):
        self._targets = targets
        self._event_counts = event_counts
        self.containers = ContainerCollector(targets)
        self.requests = Histogram(REQUEST_BUCKETS_S)
        self.loop_lag = LoopLag()
        self.last_scrape_s = 0.0
        self._standard = CollectorRegistry()
        for standard in (ProcessCollector, PlatformCollector, GCCollector):
            standard(registry=self._standard)
        self._limiter = trio.CapacityLimiter(1)

    def observe_request(self, method: str, route: str, status: int,
                        duration_s: float) -> None:
        """Count one API request; route is its path pattern, never the path."""
        method = method if method in HTTP_METHODS else "other"
        self.requests.observe((method, route, str(status)), duration_s)

    async def render(self) -> bytes:
        """The text exposition, its files read in a worker thread."""
        snapshot = self.snapshot()
        return await trio.to_thread.run_sync(self.render_snapshot, snapshot,
                                             limiter=self._limiter)

    def snapshot(self) -> Snapshot:
        return Snapshot(list(self._targets()), dict(self._event_counts()))

    def render_snapshot(self, snapshot: Snapshot) -> bytes:
        """The text exposition of a snapshot, read and written now."""
        started = time.perf_counter()
        # The per-container families are most of the text, written by
        # metrics.collector itself: several times faster than
        # generate_latest, and without objects for the garbage collector.
        containers = self.containers.families(snapshot.targets)
        text = "".join([family.text() for family in containers]).encode()
        body = text + generate_latest(_Families(self._other_families(snapshot)))
        self.last_scrape_s = time.perf_counter() - started
        return body

    def collect(self):
        """All families, read on the calling thread (prometheus-client's
        Collector interface)."""
        snapshot = self.snapshot()
        containers = self.containers.families(snapshot.targets)
        text = "".join([family.text() for family in containers])
        return [*text_string_to_metric_families(text),
                *self._other_families(snapshot)]

    def _other_families(self, snapshot: Snapshot) -> list:
        return self._daemon_families(snapshot) + list(self._standard.collect())

    def _daemon_families(self, snapshot: Snapshot) -> list:
        supervised = sum(t.state in SUPERVISED_STATES for t in snapshot.targets)
        events = CounterMetricFamily(
            "corral_events", "Events corrald published, by action.",
            labels=["action"])
        for action, count in sorted(snapshot.events.items()):
            events.add_metric([action], count)
        return [
            GaugeMetricFamily(
                "corral_daemon_supervised_containers",
                "Containers corrald supervises: running or waiting to restart.",
                value=supervised),
            events,
            self.requests.family(
                "corral_api_request_duration_seconds",
                "Time corrald took to answer API requests, until the reply's "
                "headers, by route pattern and status.",
                ["method", "route", "status"]),
            *self.loop_lag.families(),
            GaugeMetricFamily(
                "corral_metrics_scrape_duration_seconds",
                "Time the previous scrape took to read the cgroups and write "
                "the exposition.",
                value=self.last_scrape_s),
        ]


class _Families:
    """A fixed list of families, in the shape generate_latest reads."""

    def __init__(self, families: list):
        self._families = families

    def collect(self):
        return self._families
