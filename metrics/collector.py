"""Per-container series, read from cgroup files at scrape time.

One pass over the containers the daemon reports (``Target``, a read-only
snapshot it hands in) yields two sets of families:

- cAdvisor's (container_*), for running containers, with cAdvisor's names,
  types and labels: ``id`` (the cgroup path), ``name``, ``image``, and
  ``container_label_<key>`` for each container label, so dashboards made
  for cAdvisor work unchanged. The figures are one runtime.cgstats Sample
  per container plus its pressure files, so they mean the same on v1,
  hybrid and v2 hosts. Network series exist only for containers with a
  network namespace of their own, one per interface but loopback.
- corral's (corral_container_*), for every container the daemon holds,
  running or not: restarts, state, last exit code, terminations by reason,
  restart backoff, health, and the pressure shares of the last 10 s.

Nothing that changes during a container's life (restart count, pid, start
time) is a label: such figures are values, so a container keeps one series
per family across restarts. A removed container is not in the next
snapshot, so its series are gone from the next scrape.

A cgroup that vanishes while it is read (the run just ended) makes
FileNotFoundError or ProcessLookupError: its container_* series are left
out of that scrape, its corral_* series stay, and the skip is counted in
corral_metrics_vanished_cgroups_total.

Where cAdvisor's own output breaks the text format's rules, corral follows
the rules: container_memory_failcnt is a gauge (cAdvisor calls it a counter,
but a counter's name must end in _total).
"""

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from runtime import cgroups, cgstats, pressure

STATES = ("created", "running", "restarting", "exited", "removing")
TERMINATION_REASONS = ("exit", "signal", "oom", "unhealthy", "pressure")
HEALTH_STATUSES = ("starting", "healthy", "unhealthy")
COUNTER, GAUGE = "counter", "gauge"
_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


@dataclass
class Target:
    """What the collector may know of one container, copied from the
    daemon's record; cgroup is None when the container is not running."""

    cgroup_id: str
    name: str
    image: str
    cgroup: cgroups.CgroupDirs | None
    started_at_s: float  # the current (or last) run's start, Unix time
    labels: dict[str, str] = field(default_factory=dict)
    oom_kills: int = 0  # over all runs, from the daemon's OOM watchers
    pid1: int | None = None
    own_network: bool = True
    state: str = "created"  # one of STATES
    restarts: int = 0
    last_exit_code: int = 0  # of the last run that ended; 0 before any
    terminations: dict[str, int] = field(default_factory=dict)
    backoff_s: float = 0.0
    health: str | None = None  # while running with a health check
    gave_up: bool = False  # the restart policy stopped restarting it


# Families fed by one cgstats.Sample: (name, type, help, value).
_SAMPLE_FAMILIES = [
    ("container_cpu_user_seconds_total", COUNTER,
     "Cumulative user CPU time consumed in seconds.",
     lambda s: s.cpu_user_ns / 1e9),
    ("container_cpu_system_seconds_total", COUNTER,
     "Cumulative system CPU time consumed in seconds.",
     lambda s: s.cpu_system_ns / 1e9),
    ("container_cpu_cfs_periods_total", COUNTER,
     "Number of elapsed enforcement period intervals.",
     lambda s: s.cpu_periods),
    ("container_cpu_cfs_throttled_periods_total", COUNTER,
     "Number of throttled period intervals.",
     lambda s: s.cpu_throttled_periods),
    ("container_cpu_cfs_throttled_seconds_total", COUNTER,
     "Total time duration the container has been throttled in seconds.",
     lambda s: s.cpu_throttled_ns / 1e9),
    ("container_memory_usage_bytes", GAUGE,
     ("Current memory usage in bytes, including all memory regardless of "
      "when it was accessed."),
     lambda s: s.memory_usage_bytes),
    ("container_memory_working_set_bytes", GAUGE,
     "Current working set in bytes: usage minus inactive file pages.",
     lambda s: s.memory_working_set_bytes),
    ("container_memory_rss", GAUGE,
     "Size of RSS (anonymous memory) in bytes.",
     lambda s: s.memory_rss_bytes),
    ("container_memory_cache", GAUGE,
     "Number of bytes of page cache memory.",
     lambda s: s.memory_cache_bytes),
    ("container_memory_swap", GAUGE,
     "Container swap usage in bytes.",
     lambda s: s.memory_swap_bytes),
    ("container_memory_max_usage_bytes", GAUGE,
     "Maximum memory usage recorded in bytes, 0 where the kernel keeps none.",
     lambda s: s.memory_max_usage_bytes),
    ("container_memory_failcnt", GAUGE,
     "Number of times memory usage hit the limit.",
     lambda s: s.memory_failcnt),
    ("container_spec_memory_limit_bytes", GAUGE,
     "Memory limit of the container in bytes, 0 when unlimited.",
     lambda s: s.memory_limit_bytes),
    ("container_spec_memory_swap_limit_bytes", GAUGE,
     ("Swap limit of the container in bytes, swap alone; 0 when unlimited "
      "or when the container may not swap."),
     lambda s: s.memory_swap_limit_bytes),
    ("container_spec_cpu_period", GAUGE,
     "CPU period of the container in microseconds.",
     lambda s: s.cpu_period_us),
    ("container_spec_cpu_shares", GAUGE,
     "CPU share of the container (cpu.shares, or cpu.weight as shares).",
     lambda s: s.cpu_shares),
    ("container_processes", GAUGE,
     "Number of processes running inside the container.",
     lambda s: s.processes),
    ("container_threads", GAUGE,
     "Number of threads running inside the container.",
     lambda s: s.tasks),
    ("container_file_descriptors", GAUGE,
     "Number of open file descriptors of the container's processes.",
     lambda s: s.open_files),
]

_NETWORK_HELP = {
    "receive_bytes": "bytes received",
    "receive_packets": "packets received",
    "receive_errors": "errors encountered while receiving",
    "receive_packets_dropped": "packets dropped while receiving",
    "transmit_bytes": "bytes transmitted",
    "transmit_packets": "packets transmitted",
    "transmit_errors": "errors encountered while transmitting",
    "transmit_packets_dropped": "packets dropped while transmitting",
}
_PRESSURE_HELP = {
    "waiting": "at least one task in the container waited",
    "stalled": "all non-idle tasks in the container stalled",
}

# Every family this module makes, in the order of the exposition.
_FAMILIES = [
    ("container_cpu_usage_seconds_total", COUNTER,
     "Cumulative CPU time consumed in seconds."),
    *[(name, kind, text) for name, kind, text, _ in _SAMPLE_FAMILIES],
    ("container_spec_cpu_quota", GAUGE,
     ("CPU quota of the container in microseconds per period; absent when "
      "the container has no quota.")),
    ("container_oom_events_total", COUNTER,
     "Count of out of memory events observed for the container."),
    ("container_start_time_seconds", GAUGE,
     "Start time of the container's current run since the Unix epoch in seconds."),
    ("container_last_seen", GAUGE,
     "Last time the exporter saw the container, in seconds since the Unix epoch."),
    ("container_fs_reads_bytes_total", COUNTER,
     "Cumulative count of bytes read, per block device."),
    ("container_fs_writes_bytes_total", COUNTER,
     "Cumulative count of bytes written, per block device."),
    *[(f"container_network_{part}_total", COUNTER,
       f"Cumulative count of {text}, per interface.")
      for part, text in _NETWORK_HELP.items()],
    *[(f"container_pressure_{resource}_{word}_seconds_total", COUNTER,
       f"Total time duration {meaning} on {resource} in seconds.")
      for resource in pressure.RESOURCES
      for word, meaning in _PRESSURE_HELP.items()],
    ("corral_container_restarts_total", COUNTER,
     "Automatic restarts of the container since it was last started by hand."),
    ("corral_container_state", GAUGE,
     "1 for the state the container is in, 0 for the others."),
    ("corral_container_last_exit_code", GAUGE,
     "Exit code of the container's last finished run, 0 before the first ends."),
    ("corral_container_terminations_total", COUNTER,
     "Ended runs of the container over its life, by why they ended."),
    ("corral_container_restart_backoff_seconds", GAUGE,
     "Current delay the restart policy waits before the next restart."),
    ("corral_container_restart_gave_up", GAUGE,
     ("1 while the restart policy has given up on the container (retries "
      "exhausted or start limit hit), 0 otherwise.")),
    ("corral_container_health_status", GAUGE,
     ("1 for the health status of a running container with a health check, "
      "0 for the others.")),
    ("corral_container_pressure_avg10", GAUGE,
     ("Percentage of the last 10 s in which tasks of the container stalled "
      "on the resource, as the cgroup's pressure file shows it.")),
]

_NETWORK_FIELDS = [
    ("receive_bytes", "rx_bytes"), ("receive_packets", "rx_packets"),
    ("receive_errors", "rx_errors"), ("receive_packets_dropped", "rx_dropped"),
    ("transmit_bytes", "tx_bytes"), ("transmit_packets", "tx_packets"),
    ("transmit_errors", "tx_errors"), ("transmit_packets_dropped", "tx_dropped"),
]
_PRESSURE_WORDS = {"some": "waiting", "full": "stalled"}


class Family:
    """One metric family of a scrape, its series written out as text lines
    as they are added. Strings are all the scrape keeps: the garbage
    collector does not track them, so a scrape of many containers does not
    set off a full collection that would hold the daemon's event loop."""

    __slots__ = ("help", "kind", "lines", "name")

    def __init__(self, name: str, kind: str, text: str):
        self.name, self.kind, self.help = name, kind, text
        self.lines: list[str] = []

    def add(self, labels: str, value: float, extra: tuple = ()) -> None:
        """One series: the container's label text (``label_text``), plus
        (name, value) pairs."""
        if extra:
            more = ",".join([f'{k}="{_escape(v)}"' for k, v in extra])
            labels = f"{labels},{more}" if labels else more
        # repr of an int or a float is a number Prometheus reads.
        self.lines.append(f"{self.name}{{{labels}}} {value!r}\n" if labels
                          else f"{self.name} {value!r}\n")

    def text(self) -> str:
        """The family in the text format, as prometheus-client writes it."""
        return "".join([f"# HELP {self.name} {_escape_help(self.help)}\n",
                        f"# TYPE {self.name} {self.kind}\n", *self.lines])


class ContainerCollector(Collector):
    """prometheus-client collector of the per-container series.

    ``targets`` is called once per scrape by ``collect``, which gives the
    families as prometheus-client's parser reads their text. The exporter
    uses ``families`` instead, on a snapshot it took on the daemon's event
    loop, and writes their text itself. Block devices are named from
    ``sys_root``/dev/block.
    """

    def __init__(self, targets: Callable[[], Iterable[Target]],
                 sys_root: Path = Path("/sys")):
        self._targets = targets
        self._sys_root = sys_root
        self._lock = threading.Lock()
        self.vanished = 0
        self._devices: dict[tuple[int, int], str] = {}

    def collect(self):
        families = self.families(list(self._targets()))
        return text_string_to_metric_families("".join(f.text() for f in families))

    def families(self, targets: list[Target]) -> list[Family]:
        """Every family for the given containers, their cgroups read now."""
        families = {name: Family(name, kind, text) for name, kind, text in _FAMILIES}
        now_s = time.time()
        for target in targets:
            self._add_container(families, target, now_s)
        vanished = Family("corral_metrics_vanished_cgroups_total", COUNTER,
                          "Container cgroups that disappeared while a scrape "
                          "read them.")
        vanished.add("", self.vanished)
        return [*families.values(), vanished]

    def _add_container(self, families: dict, target: Target, now_s: float) -> None:
        labels = label_text(identity_labels(target))
        _add_lifecycle(families, target, labels)
        families["container_oom_events_total"].add(labels, target.oom_kills)
        if target.cgroup is None:
            return
        try:
            sample = cgstats.read_sample(target.cgroup, target.pid1,
                                         own_network=target.own_network,
                                         with_pressure=True)
        except (FileNotFoundError, ProcessLookupError):
            with self._lock:
                self.vanished += 1
            return
        self._add_sample(families, sample, labels)
        families["container_start_time_seconds"].add(labels, target.started_at_s)
        families["container_last_seen"].add(labels, now_s)

    def _add_sample(self, families: dict, sample: cgstats.Sample, labels: str):
        families["container_cpu_usage_seconds_total"].add(
            labels, sample.cpu_total_ns / 1e9, (("cpu", "total"),))
        for name, _, _, value in _SAMPLE_FAMILIES:
            families[name].add(labels, value(sample))
        if sample.cpu_quota_us:
            families["container_spec_cpu_quota"].add(labels, sample.cpu_quota_us)
        for major, minor, read, written in sample.io_devices:
            device = (("device", self._device_name(major, minor)),)
            families["container_fs_reads_bytes_total"].add(labels, read, device)
            families["container_fs_writes_bytes_total"].add(labels, written, device)
        for interface, counters in sample.networks.items():
            for part, attribute in _NETWORK_FIELDS:
                families[f"container_network_{part}_total"].add(
                    labels, getattr(counters, attribute), (("interface", interface),))
        _add_pressure(families, sample.pressure, labels)

    def _device_name(self, major: int, minor: int) -> str:
        key = (major, minor)
        if key not in self._devices:
            self._devices[key] = block_device_name(major, minor, self._sys_root)
        return self._devices[key]


def identity_labels(target: Target) -> dict[str, str]:
    """cAdvisor's labels of a container: id, name, image and one
    container_label_<key> per container label, the key's characters
    outside [a-zA-Z0-9_] made "_". Of keys that come out the same, the
    first in sorted order wins."""
    labels = {"id": target.cgroup_id, "name": target.name, "image": target.image}
    for key in sorted(target.labels):
        labels.setdefault("container_label_" + _LABEL_CHARS.sub("_", key),
                          str(target.labels[key]))
    return labels


def label_text(labels: dict[str, str]) -> str:
    """Labels as the text format writes them inside braces."""
    return ",".join([f'{k}="{_escape(v)}"' for k, v in labels.items()])


def block_device_name(major: int, minor: int, sys_root: Path = Path("/sys")) -> str:
    """/dev/NAME of a block device as cAdvisor names it, or MAJOR:MINOR
    when the kernel does not say."""
    try:
        uevent = (sys_root / f"dev/block/{major}:{minor}/uevent").read_text()
    except OSError:
        return f"{major}:{minor}"
    for line in uevent.splitlines():
        if line.startswith("DEVNAME="):
            return "/dev/" + line.removeprefix("DEVNAME=")
    return f"{major}:{minor}"


def _add_lifecycle(families: dict, target: Target, labels: str) -> None:
    families["corral_container_restarts_total"].add(labels, target.restarts)
    for state in STATES:
        families["corral_container_state"].add(
            labels, int(target.state == state), (("state", state),))
    families["corral_container_last_exit_code"].add(labels, target.last_exit_code)
    for reason in TERMINATION_REASONS:
        families["corral_container_terminations_total"].add(
            labels, target.terminations.get(reason, 0), (("reason", reason),))
    families["corral_container_restart_backoff_seconds"].add(labels, target.backoff_s)
    families["corral_container_restart_gave_up"].add(labels, int(target.gave_up))
    if target.health is not None:
        for status in HEALTH_STATUSES:
            families["corral_container_health_status"].add(
                labels, int(target.health == status), (("status", status),))


def _add_pressure(families: dict, stalls: dict, labels: str) -> None:
    for resource, kinds in stalls.items():
        for kind, stall in kinds.items():
            word = _PRESSURE_WORDS[kind]
            families[f"container_pressure_{resource}_{word}_seconds_total"].add(
                labels, stall.total_us / 1e6)
            families["corral_container_pressure_avg10"].add(
                labels, stall.avg10, (("resource", resource), ("kind", kind)))


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")
