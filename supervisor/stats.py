"""Docker-shaped stats of containers, from runtime.cgstats samples.

Docker's clients compute CPU % from two samples: cpu_stats (now) and
precpu_stats (before), each with the container's and the host's CPU time.
corral keeps each running container's previous sample in memory, so one
call answers at once: the first call of a run gets as its previous sample
the run's start (no CPU used yet, the host's CPU time then), so CPU % is
the average since start; later calls get the sample of the call before.
Nothing is read between calls: no background polling.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from runtime import cgstats

from .container import ZERO_TIME, Container
from .logs import format_time_ns


@dataclass
class _Previous:
    read_ns: int
    run_pid: int
    cpu: dict


class StatsKeeper:
    """The previous CPU sample of each container, for precpu_stats."""

    def __init__(self):
        self._previous: dict[str, _Previous] = {}
        self.online_cpus = len(os.sched_getaffinity(0)) or os.cpu_count() or 1

    def run_started(self, container: Container) -> None:
        """Remember the run's start as its first previous sample."""
        run = container.run
        self._previous[container.id] = _Previous(
            time.time_ns(), run.pid, self._cpu_stats(cgstats.Sample(),
                                                     cgstats.system_cpu_ns()))

    def forget(self, container_id: str) -> None:
        self._previous.pop(container_id, None)

    def stats(self, container: Container, pressure_view: dict | None = None) -> dict:
        """One Docker stats document; zeros when the container is not running."""
        run = container.run
        doc = _empty(container)
        if run is None:
            return doc
        own_network = container.record["HostConfig"]["NetworkMode"] != "host"
        try:
            sample = cgstats.read_sample(run.cgroup.dirs, run.pid,
                                         own_network=own_network)
        except (FileNotFoundError, ProcessLookupError):
            return doc  # it stopped while being read
        now_ns = time.time_ns()
        cpu = self._cpu_stats(sample, cgstats.system_cpu_ns())
        before = self._previous.get(container.id)
        if before is None or before.run_pid != run.pid:
            before = _Previous(now_ns, run.pid, cpu)  # nothing to compare: 0 %
        self._previous[container.id] = _Previous(now_ns, run.pid, cpu)
        doc.update(
            read=format_time_ns(now_ns),
            preread=format_time_ns(before.read_ns) if before.read_ns else ZERO_TIME,
            cpu_stats=cpu,
            precpu_stats=before.cpu,
            memory_stats=_memory_stats(sample),
            pids_stats={"current": sample.tasks,
                        **({"limit": sample.pids_limit} if sample.pids_limit else {})},
            blkio_stats=_blkio_stats(sample),
            networks={name: vars(nic) for name, nic in sample.networks.items()},
            num_procs=0,
        )
        if pressure_view is not None:
            doc["corral_pressure"] = pressure_view
        doc["corral_restart_count"] = container.record["RestartCount"]
        doc["corral_health"] = (container.state.get("Health") or {}).get("Status", "")
        return doc

    def _cpu_stats(self, sample: cgstats.Sample, system_ns: int) -> dict:
        return {
            "cpu_usage": {
                "total_usage": sample.cpu_total_ns,
                "usage_in_kernelmode": sample.cpu_system_ns,
                "usage_in_usermode": sample.cpu_user_ns,
            },
            "system_cpu_usage": system_ns,
            "online_cpus": self.online_cpus,
            "throttling_data": {
                "periods": sample.cpu_periods,
                "throttled_periods": sample.cpu_throttled_periods,
                "throttled_time": sample.cpu_throttled_ns,
            },
        }


def _empty(container: Container) -> dict:
    return {
        "name": container.record["Name"],
        "id": container.id,
        "read": ZERO_TIME,
        "preread": ZERO_TIME,
        "pids_stats": {},
        "blkio_stats": {"io_service_bytes_recursive": None},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
        "precpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
        "memory_stats": {},
    }


def _memory_stats(sample: cgstats.Sample) -> dict:
    limit = sample.memory_limit_bytes or _host_memory_bytes()
    doc = {"usage": sample.memory_usage_bytes, "stats": sample.memory_stat,
           "limit": limit}
    if sample.memory_failcnt or sample.memory_max_usage_bytes:
        doc["max_usage"] = sample.memory_max_usage_bytes
        doc["failcnt"] = sample.memory_failcnt
    return doc


def _blkio_stats(sample: cgstats.Sample) -> dict:
    entries = []
    for major, minor, read, write in sample.io_devices:
        entries.append({"major": major, "minor": minor, "op": "read", "value": read})
        entries.append({"major": major, "minor": minor, "op": "write", "value": write})
    return {"io_service_bytes_recursive": entries or None}


def _host_memory_bytes() -> int:
    # Docker reports the host's memory as the limit of an unlimited container.
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
