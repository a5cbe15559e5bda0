"""Pressure stall information (PSI) of one container's cgroup.

What a reader needs to know about the kernel interface:

- Each cgroup of the cgroup2 tree has cpu.pressure, memory.pressure and
  io.pressure: a "some" line (time at least one task stalled on the
  resource) and a "full" line (all non-idle tasks stalled at once), each with
  avg10/avg60/avg300 (percent) and total (microseconds, only grows). On
  hybrid hosts the files live in the unified tree, which has no controllers
  but keeps PSI. Pure v1 hosts, and kernels booted with psi=0, have none.
- A trigger is set by writing "some|full THRESHOLD_US WINDOW_US" to an open
  pressure file: the kernel then signals POLLPRI on that descriptor when the
  stall time within any window reaches the threshold, at most once per
  window, for as long as the descriptor stays open. Windows run from 500 ms
  to 10 s, but a process without CAP_SYS_RESOURCE may only use multiples of
  2 s (Linux 6.5+); others get EINVAL. ``pick_window_us`` finds the nearest
  window the kernel takes, once, by trying.
- POLLPRI is not POLLIN, so a trigger's descriptor never looks readable to a
  plain poller. ``Trigger`` puts each trigger in an epoll instance of its
  own, whose descriptor does become readable; the daemon waits on that.
"""

from __future__ import annotations

import errno
import os
import select
from dataclasses import dataclass
from pathlib import Path

RESOURCES = ("cpu", "memory", "io")
KINDS = ("some", "full")
MIN_WINDOW_US = 500_000
MAX_WINDOW_US = 10_000_000
UNPRIVILEGED_STEP_US = 2_000_000


class PressureError(Exception):
    """A trigger could not be set; the message is meant for users."""


@dataclass(frozen=True)
class Stall:
    """One line of a pressure file."""

    avg10: float
    avg60: float
    avg300: float
    total_us: int

    def to_dict(self) -> dict:
        return {"Avg10": self.avg10, "Avg60": self.avg60, "Avg300": self.avg300,
                "TotalMicroseconds": self.total_us}


def pressure_path(cgroup_dir: Path | str, resource: str) -> str:
    return f"{cgroup_dir}/{resource}.pressure"


def read_pressure(cgroup_dir: Path | str, resource: str) -> dict[str, Stall]:
    """{"some": Stall, "full": Stall} of one resource; the kernel leaves out
    "full" for cpu on the root cgroup only. FileNotFoundError when the file
    is missing."""
    # One os.read, not Path.read_text: inspect, stats and every pressure
    # window read these, and pathlib and the text layer cost more than the
    # read itself. The file is two lines, well under 4 KiB.
    fd = os.open(pressure_path(cgroup_dir, resource), os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return parse_pressure(data.decode())


def parse_pressure(text: str) -> dict[str, Stall]:
    stalls = {}
    for line in text.splitlines():
        kind, *items = line.split()
        values = dict(item.partition("=")[::2] for item in items)
        stalls[kind] = Stall(
            avg10=float(values["avg10"]),
            avg60=float(values["avg60"]),
            avg300=float(values["avg300"]),
            total_us=int(values["total"]),
        )
    return stalls


def has_pressure(cgroup_dir: Path | None) -> bool:
    """Whether the cgroup has pressure files (cgroup2 with PSI on)."""
    if cgroup_dir is None:
        return False
    try:
        read_pressure(cgroup_dir, "cpu")
    except (FileNotFoundError, OSError):
        return False
    return True


def open_trigger(path: Path, kind: str, threshold_us: int, window_us: int) -> int:
    """A descriptor that signals POLLPRI on each window whose stall time of
    ``kind`` reaches ``threshold_us``. Raises OSError as the kernel does."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, f"{kind} {threshold_us} {window_us}\0".encode())
    except OSError:
        os.close(fd)
        raise
    return fd


def candidate_windows_us(wanted_us: int) -> list[int]:
    """Windows to try, nearest to ``wanted_us`` first: the wanted one, then
    the multiples of 2 s that unprivileged processes may use."""
    wanted_us = min(max(wanted_us, MIN_WINDOW_US), MAX_WINDOW_US)
    steps = range(UNPRIVILEGED_STEP_US, MAX_WINDOW_US + 1, UNPRIVILEGED_STEP_US)
    others = sorted((s for s in steps if s != wanted_us),
                    key=lambda s: (abs(s - wanted_us), s))
    return [wanted_us, *others]


def pick_window_us(cgroup_dir: Path, wanted_us: int) -> int | None:
    """The accepted trigger window nearest to ``wanted_us``, found by setting
    a trigger on ``cgroup_dir``'s cpu.pressure and closing it again; None
    when the kernel takes no trigger there (then sample instead)."""
    path = pressure_path(cgroup_dir, "cpu")
    for window_us in candidate_windows_us(wanted_us):
        try:
            os.close(open_trigger(path, "some", window_us // 10, window_us))
        except OSError as err:
            if err.errno == errno.EINVAL:
                continue
            return None
        return window_us
    return None


class Trigger:
    """One pressure trigger behind a descriptor that trio can wait on.

    The trigger's own descriptor signals POLLPRI, which a readiness wait for
    reading does not see, so it sits in an epoll instance of its own: the
    epoll descriptor is readable once the trigger fired. Checking that
    readiness consumes the kernel's "fired" flag, so the fact that ``fd``
    became readable is the event itself; ``rearm`` then empties the epoll
    instance for the next wait.
    """

    def __init__(self, path: Path, kind: str, threshold_us: int, window_us: int):
        try:
            self._trigger = open_trigger(path, kind, threshold_us, window_us)
        except OSError as err:
            raise PressureError(
                f"cannot set a pressure trigger on {path} ({kind} "
                f"{threshold_us} us in {window_us} us): "
                f"{os.strerror(err.errno).lower()}"
            ) from err
        self._epoll = select.epoll()
        self._epoll.register(self._trigger, select.EPOLLPRI | select.EPOLLERR)

    @property
    def fd(self) -> int:
        return self._epoll.fileno()

    def rearm(self) -> None:
        self._epoll.poll(0)

    def close(self) -> None:
        self._epoll.close()
        os.close(self._trigger)
