"""Kernel notifications of OOM kills in one container's cgroup.

What a reader needs to know about the kernel interfaces:

- cgroup v2 counts OOM events per cgroup in memory.events (oom: the limit
  was hit and reclaim failed; oom_kill: a process was killed; oom_group_kill:
  memory.oom.group killed the whole cgroup; max and high: limit hits). The
  kernel raises IN_MODIFY on that file whenever a counter changes, so an
  inotify watch wakes the daemon: no polling. The notification is queued to
  a workqueue, a fraction of a millisecond after the kill.
- cgroup v1 has no such file. An eventfd registered through
  cgroup.event_control ("<eventfd> <fd of memory.oom_control>") is signalled
  when the cgroup enters OOM, which is before the victim is chosen: the
  oom_kill counter in memory.oom_control (Linux 4.13+) rises a moment later,
  so a caller re-reads it briefly after the signal. The eventfd is also
  signalled when the cgroup is removed.
- cgroupfs sends no event when a cgroup is removed, but cgroup.events
  (populated 0/1) in the unified tree changes when the last process leaves;
  it is watched on v2 and on hybrid hosts, which also have the unified tree.
- The counters only grow while the cgroup exists. corral makes a new cgroup
  for every run, so a run's counters start at 0.

Nothing here waits: the caller waits for any of ``fds`` to be readable (trio
in the daemon), then calls ``drain`` and reads the counters.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime import _sys
from runtime.cgroups import CgroupDirs, Layout, memory_events

OOM_CONTROL = "memory.oom_control"
EVENT_CONTROL = "cgroup.event_control"


class OomWatchError(Exception):
    """The watch could not be set up; the message is meant for users."""


class OomWatch:
    """The descriptors that signal OOM and emptiness of one cgroup."""

    def __init__(self, dirs: CgroupDirs):
        self.dirs = dirs
        self._inotify: int | None = None
        self._eventfd: int | None = None
        self._oom_control: int | None = None
        try:
            self._open()
        except OSError as err:
            self.close()
            raise OomWatchError(
                f"cannot watch {err.filename or dirs.path('memory')} for OOM "
                f"kills ({os.strerror(err.errno).lower()}); OOM kills of this run "
                f"are found only when it exits"
            ) from err

    def _open(self) -> None:
        self._inotify = _sys.inotify_init()
        if self.dirs.layout is Layout.V2:
            _sys.inotify_add_watch(self._inotify, str(self._memory / "memory.events"))
        else:
            self._register_eventfd()
        if self.dirs.unified is not None:
            _sys.inotify_add_watch(self._inotify, str(self.dirs.unified / "cgroup.events"))

    def _register_eventfd(self) -> None:
        self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._oom_control = os.open(self._memory / OOM_CONTROL, os.O_RDONLY | os.O_CLOEXEC)
        control = os.open(self._memory / EVENT_CONTROL, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(control, f"{self._eventfd} {self._oom_control}".encode())
        finally:
            os.close(control)

    @property
    def _memory(self) -> Path:
        return self.dirs.path("memory")

    @property
    def fds(self) -> list[int]:
        """Descriptors that become readable when something may have changed."""
        return [fd for fd in (self._inotify, self._eventfd) if fd is not None]

    def drain(self) -> None:
        """Consume the pending notifications, so the fds block again."""
        for fd in self.fds:
            try:
                while os.read(fd, 4096):
                    pass
            except BlockingIOError:
                pass

    def counts(self) -> dict[str, int]:
        """The cgroup's OOM counters, keyed as in v2's memory.events."""
        return memory_events(self.dirs)

    def oom_kills(self) -> int:
        """Processes the kernel OOM-killed in this cgroup so far."""
        return self.counts().get("oom_kill", 0)

    def populated(self) -> bool | None:
        """Whether any process is left, or None where the host cannot tell."""
        if self.dirs.unified is None:
            return None
        text = (self.dirs.unified / "cgroup.events").read_text()
        return "populated 1" in text

    def close(self) -> None:
        for name in ("_inotify", "_eventfd", "_oom_control"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
