"""One sample of a running container's counters, read from its cgroup and
/proc, the same way on every host layout.

The stats API (Docker's shape) and the Prometheus collector (cAdvisor's
names) both present a ``Sample``; this is the only place that knows which
file holds which figure on v1 and on v2:

- CPU: v2 cpu.stat (usage_usec, user_usec, system_usec, nr_periods,
  nr_throttled, throttled_usec); v1 cpuacct.usage (ns), cpuacct.stat
  (user/system in USER_HZ ticks) and cpu.stat (throttled_time in ns).
- CPU limits: v2 cpu.max ("QUOTA|max PERIOD") and cpu.weight (1-10000),
  shown as v1 shares the way cAdvisor converts them; v1 cpu.cfs_quota_us
  (-1: none), cpu.cfs_period_us and cpu.shares.
- Memory: v2 memory.current, memory.stat (anon, file, inactive_file),
  memory.swap.current, memory.peak; v1 memory.usage_in_bytes, memory.stat
  (total_rss, total_cache, total_inactive_file, total_swap),
  memory.max_usage_in_bytes, memory.failcnt.
- Block I/O: v2 io.stat ("MAJ:MIN rbytes=... wbytes=..."); v1
  blkio.throttle.io_service_bytes_recursive ("MAJ:MIN Read N").
- Processes and threads: pids.current counts tasks (threads); processes
  are the pids in cgroup.procs; open files are counted in /proc/PID/fd.
- Network: /proc/PID/net/dev of PID 1 shows the interfaces of the
  container's network namespace.
- Pressure (when asked for): cpu.pressure, memory.pressure, io.pressure of
  the cgroup2 directory (v2 and hybrid); none on pure v1 hosts or kernels
  booted with psi=0.

A cgroup that vanishes mid-read raises FileNotFoundError, which callers
treat as "the container just stopped".
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from runtime.cgroups import CgroupDirs, Layout
from runtime.pressure import RESOURCES, Stall, parse_pressure

_USER_HZ = os.sysconf("SC_CLK_TCK")
_NS_PER_TICK = 1_000_000_000 // _USER_HZ
_READ_BYTES = 64 * 1024


@dataclass
class Interface:
    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


@dataclass
class Sample:
    cpu_total_ns: int = 0
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    cpu_periods: int = 0
    cpu_throttled_periods: int = 0
    cpu_throttled_ns: int = 0
    cpu_quota_us: int = 0  # 0: no quota
    cpu_period_us: int = 0
    cpu_shares: int = 0
    memory_usage_bytes: int = 0
    memory_limit_bytes: int = 0  # 0: no limit
    memory_swap_limit_bytes: int = 0  # swap alone; 0: none or no limit
    memory_rss_bytes: int = 0
    memory_cache_bytes: int = 0
    memory_inactive_file_bytes: int = 0
    memory_swap_bytes: int = 0
    memory_max_usage_bytes: int = 0
    memory_failcnt: int = 0
    memory_stat: dict[str, int] = field(default_factory=dict)
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    io_devices: list[tuple[int, int, int, int]] = field(default_factory=list)
    tasks: int = 0
    pids_limit: int = 0  # 0: no limit
    processes: int = 0
    open_files: int = 0
    networks: dict[str, Interface] = field(default_factory=dict)
    # {resource: {"some"|"full": Stall}}; empty where the host keeps none.
    pressure: dict[str, dict[str, Stall]] = field(default_factory=dict)

    @property
    def memory_working_set_bytes(self) -> int:
        return max(0, self.memory_usage_bytes - self.memory_inactive_file_bytes)


def read_sample(dirs: CgroupDirs, pid1: int | None = None, *,
                own_network: bool = True, with_pressure: bool = False) -> Sample:
    """Everything corral reports about a running container, read now;
    its pressure files too when with_pressure is set."""
    sample = Sample()
    _read_cpu(dirs, sample)
    _read_cpu_limits(dirs, sample)
    _read_memory(dirs, sample)
    _read_io(dirs, sample)
    _read_tasks(dirs, sample)
    if pid1 is not None and own_network:
        sample.networks = read_networks(pid1)
    if with_pressure and dirs.unified is not None:
        sample.pressure = _read_pressure(dirs.unified)
    return sample


def system_cpu_ns() -> int:
    """CPU time of the whole host since boot, as Docker's system_cpu_usage."""
    with open("/proc/stat") as stat:
        ticks = stat.readline().split()[1:8]
    return sum(int(t) for t in ticks) * _NS_PER_TICK


def read_networks(pid: int) -> dict[str, Interface]:
    """Counters of the interfaces in pid's network namespace but loopback."""
    found = {}
    lines = _read_text(f"/proc/{pid}/net/dev").splitlines()[2:]
    for line in lines:
        name, _, numbers = line.partition(":")
        name = name.strip()
        if name == "lo":
            continue
        v = [int(x) for x in numbers.split()]
        found[name] = Interface(v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11])
    return found


def _read_cpu(dirs: CgroupDirs, s: Sample) -> None:
    if dirs.layout is Layout.V2:
        stat = _keyed(f"{dirs.unified}/cpu.stat")
        s.cpu_total_ns = stat.get("usage_usec", 0) * 1000
        s.cpu_user_ns = stat.get("user_usec", 0) * 1000
        s.cpu_system_ns = stat.get("system_usec", 0) * 1000
        s.cpu_throttled_ns = stat.get("throttled_usec", 0) * 1000
    else:
        cpuacct = dirs.path("cpuacct")
        s.cpu_total_ns = _int(f"{cpuacct}/cpuacct.usage")
        ticks = _keyed(f"{cpuacct}/cpuacct.stat")
        s.cpu_user_ns = ticks.get("user", 0) * _NS_PER_TICK
        s.cpu_system_ns = ticks.get("system", 0) * _NS_PER_TICK
        stat = _keyed(f"{dirs.path('cpu')}/cpu.stat")
        s.cpu_throttled_ns = stat.get("throttled_time", 0)
    s.cpu_periods = stat.get("nr_periods", 0)
    s.cpu_throttled_periods = stat.get("nr_throttled", 0)


def _read_cpu_limits(dirs: CgroupDirs, s: Sample) -> None:
    # The limit files exist only where the cpu controller is on; without
    # it the cgroup has no CPU limit, and the figures stay 0.
    if dirs.layout is Layout.V2:
        try:
            quota, period = _read_text(f"{dirs.unified}/cpu.max").split()
        except FileNotFoundError:
            return
        s.cpu_quota_us = 0 if quota == "max" else int(quota)
        s.cpu_period_us = int(period)
        weight = _int(f"{dirs.unified}/cpu.weight", missing=0)
        s.cpu_shares = 2 + (weight - 1) * 262142 // 9999 if weight else 0
        return
    if not dirs.has("cpu"):
        return
    path = dirs.path("cpu")
    s.cpu_quota_us = max(0, _int(f"{path}/cpu.cfs_quota_us", missing=0))
    s.cpu_period_us = _int(f"{path}/cpu.cfs_period_us", missing=0)
    s.cpu_shares = _int(f"{path}/cpu.shares", missing=0)


def _read_memory(dirs: CgroupDirs, s: Sample) -> None:
    path = dirs.path("memory")
    s.memory_stat = stat = _keyed(f"{path}/memory.stat")
    if dirs.layout is Layout.V2:
        s.memory_usage_bytes = _int(f"{path}/memory.current")
        s.memory_limit_bytes = _limit(f"{path}/memory.max")
        s.memory_swap_limit_bytes = _limit(f"{path}/memory.swap.max", missing=0)
        s.memory_rss_bytes = stat.get("anon", 0)
        s.memory_cache_bytes = stat.get("file", 0)
        s.memory_inactive_file_bytes = stat.get("inactive_file", 0)
        s.memory_swap_bytes = _int(f"{path}/memory.swap.current", missing=0)
        s.memory_max_usage_bytes = _int(f"{path}/memory.peak", missing=0)
        s.memory_failcnt = _keyed(f"{path}/memory.events").get("max", 0)
        return
    s.memory_usage_bytes = _int(f"{path}/memory.usage_in_bytes")
    s.memory_limit_bytes = _v1_limit(_int(f"{path}/memory.limit_in_bytes"))
    memsw = _v1_limit(_int(f"{path}/memory.memsw.limit_in_bytes", missing=0))
    if memsw and s.memory_limit_bytes:
        s.memory_swap_limit_bytes = max(0, memsw - s.memory_limit_bytes)
    s.memory_rss_bytes = stat.get("total_rss", stat.get("rss", 0))
    s.memory_cache_bytes = stat.get("total_cache", stat.get("cache", 0))
    s.memory_inactive_file_bytes = stat.get("total_inactive_file", 0)
    s.memory_swap_bytes = stat.get("total_swap", stat.get("swap", 0))
    s.memory_max_usage_bytes = _int(f"{path}/memory.max_usage_in_bytes")
    s.memory_failcnt = _int(f"{path}/memory.failcnt")


def _read_io(dirs: CgroupDirs, s: Sample) -> None:
    if dirs.layout is Layout.V2:
        path = f"{dirs.unified}/io.stat"
        if not os.path.exists(path):
            return
        for line in _read_text(path).splitlines():
            device, *items = line.split()
            values = dict(item.partition("=")[::2] for item in items)
            major, minor = (int(x) for x in device.split(":"))
            read, write = int(values.get("rbytes", 0)), int(values.get("wbytes", 0))
            s.io_devices.append((major, minor, read, write))
    elif dirs.has("blkio"):
        per_device: dict[tuple[int, int], list[int]] = {}
        path = f"{dirs.path('blkio')}/blkio.throttle.io_service_bytes_recursive"
        for line in _read_text(path).splitlines():
            words = line.split()
            if len(words) != 3 or words[1] not in ("Read", "Write"):
                continue
            major, minor = (int(x) for x in words[0].split(":"))
            entry = per_device.setdefault((major, minor), [0, 0])
            entry[0 if words[1] == "Read" else 1] += int(words[2])
        s.io_devices = [(ma, mi, r, w) for (ma, mi), (r, w) in per_device.items()]
    s.io_read_bytes = sum(d[2] for d in s.io_devices)
    s.io_write_bytes = sum(d[3] for d in s.io_devices)


def _read_tasks(dirs: CgroupDirs, s: Sample) -> None:
    pids_dir = dirs.path("pids")
    s.tasks = _int(f"{pids_dir}/pids.current")
    s.pids_limit = _limit(f"{pids_dir}/pids.max")
    procs = [int(p) for p in _read_text(f"{pids_dir}/cgroup.procs").split()]
    s.processes = len(procs)
    for pid in procs:
        try:
            s.open_files += len(os.listdir(f"/proc/{pid}/fd"))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited meanwhile


def _read_pressure(directory: Path) -> dict[str, dict[str, Stall]]:
    stalls = {}
    for resource in RESOURCES:
        path = f"{directory}/{resource}.pressure"
        try:
            stalls[resource] = parse_pressure(_read_text(path))
        except FileNotFoundError:
            if not directory.is_dir():
                raise  # the cgroup is gone, not just its pressure files
        except OSError as err:
            # Kernels booted with psi=0 may keep the files but refuse reads.
            if err.errno != errno.EOPNOTSUPP:
                raise
    return stalls


def _read_text(path) -> str:
    # os.read rather than Path.read_text: a scrape reads some twenty small
    # files per container, and the text layers cost more than the reads.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _READ_BYTES):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def _keyed(path) -> dict[str, int]:
    result = {}
    for line in _read_text(path).splitlines():
        key, _, value = line.partition(" ")
        try:
            result[key] = int(value)
        except ValueError:
            continue  # not a number: not a counter
    return result


def _int(path, missing: int | None = None) -> int:
    try:
        return int(_read_text(path))
    except FileNotFoundError:
        if missing is None:
            raise
        return missing


def _limit(path, missing: int | None = None) -> int:
    """A v2 limit file ("max" or a number) as bytes, 0 for no limit."""
    try:
        text = _read_text(path).strip()
    except FileNotFoundError:
        if missing is None:
            raise
        return missing
    return 0 if text == "max" else int(text)


def _v1_limit(value: int) -> int:
    # v1 shows "no limit" as a huge page-aligned number.
    return 0 if value >= (1 << 62) else value
