"""corrald's own health: API request durations and event-loop lag.

Both are histograms kept here rather than prometheus-client's Histogram, so
they carry no _created series and no process-wide registry: each exporter
has its own, and a scrape (in a worker thread) copies them under a lock
while the event loop goes on observing.

The lag is how late a task that sleeps a fixed interval wakes up: any work
that holds the event loop (a slow handler, a blocking read) delays every
task's wake-up by as long as it holds it, and this one measures it.
"""

import bisect
import threading
from collections.abc import Iterable

import trio
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

REQUEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0)
LAG_INTERVAL_S = 0.1


class Histogram:
    """Observations per label values, in cumulative buckets."""

    def __init__(self, bounds: Iterable[float]):
        self.bounds = tuple(bounds)
        self._series: dict[tuple[str, ...], list[float]] = {}
        self._lock = threading.Lock()

    def observe(self, values: tuple[str, ...], amount: float) -> None:
        with self._lock:
            counts = self._series.get(values)
            if counts is None:
                # One count per bound, one for +Inf, then the sum.
                counts = self._series[values] = [0] * (len(self.bounds) + 2)
            counts[bisect.bisect_left(self.bounds, amount)] += 1
            counts[-1] += amount

    def family(self, name: str, text: str, labels: list[str]) -> HistogramMetricFamily:
        with self._lock:
            series = {values: list(counts) for values, counts in self._series.items()}
        family = HistogramMetricFamily(name, text, labels=labels)
        edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for values, counts in sorted(series.items()):
            total, buckets = 0, []
            for edge, count in zip(edges, counts[:-1]):
                total += count
                buckets.append((edge, total))
            family.add_metric(list(values), buckets, counts[-1])
        return family


class LoopLag:
    """A trio task that measures the event loop's lag, and its series."""

    def __init__(self, interval_s: float = LAG_INTERVAL_S):
        self.interval_s = interval_s
        self.last_s = 0.0
        self.histogram = Histogram(LAG_BUCKETS_S)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Sleep the interval over and over, and note each late wake-up."""
        task_status.started()
        while True:
            started = trio.current_time()
            await trio.sleep(self.interval_s)
            self.observe(trio.current_time() - started - self.interval_s)

    def observe(self, lag_s: float) -> None:
        self.last_s = max(0.0, lag_s)
        self.histogram.observe((), self.last_s)

    def families(self) -> list:
        gauge = GaugeMetricFamily(
            "corral_daemon_event_loop_lag_seconds",
            "How late the latest periodic wake-up on corrald's event loop came.",
            value=self.last_s,
        )
        histogram = self.histogram.family(
            "corral_daemon_event_loop_wakeup_lag_seconds",
            f"How late corrald's event loop woke a task sleeping "
            f"{self.interval_s:g} s, over every wake-up.",
            [],
        )
        return [gauge, histogram]
