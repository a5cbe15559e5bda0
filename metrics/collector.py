"""Per-container series with cAdvisor's names and labels, read at scrape time.

The daemon hands the collector a callable that lists the containers to
report (a read-only view), so this package never imports the daemon. A
cgroup that vanishes mid-scrape (the container just exited) is skipped and
counted in corral_metrics_vanished_cgroups_total.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from runtime import cgroups, pressure

LABELS = ["id", "name", "image"]


@dataclass
class Target:
    """What the collector may know of one container; cgroup is None when
    it is not running, and then only its lifetime counters are reported."""

    cgroup_id: str
    name: str
    image: str
    cgroup: cgroups.CgroupDirs | None
    started_at_s: float
    memory_limit_bytes: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    oom_kills: int = 0  # over all runs, from the daemon's OOM watchers


class ContainerCollector(Collector):
    def __init__(self, targets: Callable[[], Iterable[Target]]):
        self._targets = targets
        self.vanished = 0

    def collect(self):
        families = _families()
        for target in self._targets():
            values = [target.cgroup_id, target.name, target.image]
            families["oom"].add_metric(values, target.oom_kills)
            if target.cgroup is None:
                continue
            try:
                samples = _read(target)
            except (FileNotFoundError, ProcessLookupError):
                self.vanished += 1
                continue
            for key, value in samples.items():
                families[key].add_metric(values, value)
        yield from families.values()
        vanished = CounterMetricFamily(
            "corral_metrics_vanished_cgroups",
            "Container cgroups that disappeared while a scrape read them.",
        )
        vanished.add_metric([], self.vanished)
        yield vanished


def _families() -> dict:
    return {
        "cpu": CounterMetricFamily(
            "container_cpu_usage_seconds",
            "Cumulative CPU time consumed by the container in seconds.",
            labels=LABELS,
        ),
        "memory": GaugeMetricFamily(
            "container_memory_usage_bytes",
            "Current memory usage in bytes, including all memory regardless of when it was accessed.",
            labels=LABELS,
        ),
        "working_set": GaugeMetricFamily(
            "container_memory_working_set_bytes",
            "Current working set in bytes: usage minus inactive file pages.",
            labels=LABELS,
        ),
        "processes": GaugeMetricFamily(
            "container_processes",
            "Number of processes running inside the container.",
            labels=LABELS,
        ),
        "limit": GaugeMetricFamily(
            "container_spec_memory_limit_bytes",
            "Memory limit of the container in bytes, 0 when unlimited.",
            labels=LABELS,
        ),
        "start": GaugeMetricFamily(
            "container_start_time_seconds",
            "Start time of the container's current run since the Unix epoch in seconds.",
            labels=LABELS,
        ),
        "oom": CounterMetricFamily(
            "container_oom_events",
            "Count of out of memory events observed for the container.",
            labels=LABELS,
        ),
        **{
            f"pressure_{resource}_{name}": CounterMetricFamily(
                f"container_pressure_{resource}_{name}_seconds",
                f"Total time duration {meaning} on {resource} in seconds.",
                labels=LABELS,
            )
            for resource in pressure.RESOURCES
            for name, meaning in _PRESSURE_KINDS.values()
        },
    }


# Pressure file line -> (metric name part, what it measures), cAdvisor's names.
_PRESSURE_KINDS = {
    "some": ("waiting", "at least one task in the container waited"),
    "full": ("stalled", "all non-idle tasks in the container stalled"),
}


def _read(target: Target) -> dict[str, float]:
    usage = cgroups.memory_usage_bytes(target.cgroup)
    stat = cgroups.memory_stat(target.cgroup)
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return {
        "cpu": cgroups.cpu_usage_ns(target.cgroup) / 1e9,
        "memory": usage,
        "working_set": max(0, usage - inactive),
        "processes": cgroups.pids_current(target.cgroup),
        "limit": target.memory_limit_bytes,
        "start": target.started_at_s,
        **_pressure_samples(target.cgroup),
    }


def _pressure_samples(dirs: cgroups.CgroupDirs) -> dict[str, float]:
    """Pressure totals in seconds; none at all where the host has no PSI
    (pure v1, psi=0), so the series are absent rather than 0."""
    if not pressure.has_pressure(dirs.unified):
        return {}
    samples = {}
    for resource in pressure.RESOURCES:
        for kind, stall in pressure.read_pressure(dirs.unified, resource).items():
            name, _ = _PRESSURE_KINDS[kind]
            samples[f"pressure_{resource}_{name}"] = stall.total_us / 1e6
    return samples
