"""Watching one run's cgroup for OOM kills and pressure, on the trio loop.

One ``RunWatch`` per run, its tasks in the run's nursery: no thread and no
polling loop per container. OOM kills wake it through inotify (v2) or an
eventfd (v1) from runtime.oom; pressure through kernel PSI triggers from
runtime.pressure, or, where the kernel refuses triggers, a sample of the
pressure totals each window. While a resource is high, or counting towards a
pressure action, it is sampled each window until it clears.

The engine gets what happened through two callbacks, so this module neither
publishes events nor touches records itself.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from runtime import cgroups as rt_cgroups
from runtime import oom as rt_oom
from runtime import pressure as rt_pressure
from runtime.kmsg import KernelLog

from .pressure import PressureConfig, ResourceTracker, share_percent

log = structlog.get_logger()

# On v1 the OOM eventfd fires before the victim is killed; the kill counter
# is re-read after these pauses until it rises.
V1_RECHECK_DELAYS_S = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064)
DEFAULT_WINDOW_S = 1.0


@dataclass(frozen=True)
class OomKill:
    pid: int | None  # host pid of the killed process, when the kernel log says
    pid1: bool | None  # whether it was the container's PID 1, when known


@dataclass(frozen=True)
class PressureMode:
    """How pressure is watched on this host, decided once at daemon start."""

    mode: str  # "trigger", "sampling" or "unavailable"
    window_s: float

    @classmethod
    def detect(cls, unified_dir, wanted_s: float = DEFAULT_WINDOW_S) -> PressureMode:
        if not rt_pressure.has_pressure(unified_dir):
            return cls("unavailable", wanted_s)
        window_us = rt_pressure.pick_window_us(unified_dir, round(wanted_s * 1e6))
        if window_us is None:
            return cls("sampling", wanted_s)
        return cls("trigger", window_us / 1e6)


class RunWatch:
    """OOM and pressure watchers of one run of a container."""

    def __init__(
        self,
        *,
        container_id: str,
        pid1: int,
        dirs: rt_cgroups.CgroupDirs,
        kmsg: KernelLog | None,
        mode: PressureMode,
        pressure: PressureConfig,
        on_oom: Callable[[list[OomKill]], None],
        on_pressure: Callable[[str, str, float], None],
        oom_kills_seen: int = 0,
    ):
        self.container_id = container_id
        self.pid1 = pid1
        self.dirs = dirs
        self.kmsg = kmsg
        self.mode = mode
        self.trackers: dict[str, ResourceTracker] = pressure.trackers()
        self.on_oom = on_oom
        self.on_pressure = on_pressure
        self.oom_kills_seen = oom_kills_seen
        self._oom: rt_oom.OomWatch | None = None

    # ---- OOM -------------------------------------------------------------

    async def watch_oom(self) -> None:
        try:
            self._oom = rt_oom.OomWatch(self.dirs)
        except (rt_oom.OomWatchError, rt_cgroups.CgroupError) as err:
            log.warning("oom_watch_failed", error=str(err))
            return
        try:
            async with trio.open_nursery() as nursery:
                for fd in self._oom.fds:
                    nursery.start_soon(self._wait_oom_fd, fd)
        finally:
            # Closing an inotify instance waits for an SRCU grace period
            # (5-20 ms): off the loop, so the die event is not held up.
            trio.lowlevel.spawn_system_task(trio.to_thread.run_sync, self._oom.close)

    async def _wait_oom_fd(self, fd: int) -> None:
        while True:
            await trio.lowlevel.wait_readable(fd)
            self._oom.drain()
            if self._emptied():
                return
            if self.check_oom() or self.dirs.layout is rt_cgroups.Layout.V2:
                continue
            # v1: the eventfd fired on entering OOM; the kill follows.
            for delay_s in V1_RECHECK_DELAYS_S:
                await trio.sleep(delay_s)
                if self.check_oom():
                    break

    def _emptied(self) -> bool:
        """Whether the cgroup lost its last process (cgroup.events says so;
        cgroupfs sends nothing on removal): a last look for kills, and the
        watch is over."""
        try:
            populated = self._oom.populated()
        except FileNotFoundError:
            populated = False
        if populated is not False:
            return False
        self.check_oom()
        log.debug("cgroup_emptied")
        return True

    def check_oom(self) -> bool:
        """Report kills not reported yet; True if there were any. Also called
        when the run has ended, so no kill goes unreported before its die."""
        try:
            count = rt_cgroups.memory_events(self.dirs).get("oom_kill", 0)
        except (FileNotFoundError, rt_cgroups.CgroupError):
            return False
        if count <= self.oom_kills_seen:
            return False
        new = count - self.oom_kills_seen
        self.oom_kills_seen = count
        records = self.kmsg.take(self.container_id) if self.kmsg else []
        kills = [OomKill(r.pid, r.pid == self.pid1) for r in records[-new:]]
        kills += [OomKill(None, None)] * (new - len(kills))
        self.on_oom(kills)
        return True

    # ---- pressure ----------------------------------------------------------

    async def watch_pressure(self) -> None:
        directory = self.dirs.unified
        if self.mode.mode == "unavailable" or directory is None:
            return
        window_s = self.mode.window_s
        fired_send, fired = trio.open_memory_channel(math.inf)
        triggers = _TriggerSet()
        try:
            if self.mode.mode == "trigger":
                # Setting a trigger can wait for the kernel: 10-20 ms while
                # triggers of an earlier run on the same cgroup are being
                # closed (each close waits for an RCU grace period). So it
                # runs in a thread, and a cancel (the run ended) does not
                # wait for it: the set closes what the thread makes after.
                await trio.to_thread.run_sync(
                    self._set_triggers, directory, window_s, triggers,
                    abandon_on_cancel=True)
            async with trio.open_nursery() as nursery:
                for resource, trigger in triggers.items:
                    nursery.start_soon(_wait_trigger, trigger, resource, fired_send)
                await self._track(directory, window_s, fired,
                                  sample_always=not triggers.items)
        finally:
            if left := triggers.abandon():
                trio.lowlevel.spawn_system_task(trio.to_thread.run_sync, _close_all, left)

    def _set_triggers(self, directory, window_s: float, triggers: _TriggerSet) -> None:
        window_us = round(window_s * 1e6)
        try:
            for resource, tracker in self.trackers.items():
                threshold_us = max(1, round(window_us * tracker.trigger_level / 100))
                path = rt_pressure.pressure_path(directory, resource)
                trigger = rt_pressure.Trigger(path, "some", threshold_us, window_us)
                if not triggers.add(resource, trigger):
                    return
        except rt_pressure.PressureError as err:
            log.warning("pressure_trigger_failed", error=str(err),
                        consequence="this run's pressure is sampled each window")
            _close_all(triggers.abandon())

    async def _track(self, directory, window_s: float, fired, sample_always: bool):
        last = self._totals(directory)
        while True:
            sampling = sample_always or any(t.needs_samples for t in self.trackers.values())
            resource = None
            with trio.move_on_after(window_s if sampling else math.inf):
                resource = await fired.receive()
            now = trio.current_time()
            current = self._totals(directory)
            if current is None:
                return  # the cgroup is gone: the run is over
            if resource is not None:
                self._feed(resource, self.trackers[resource].on_trigger(now), None)
                last[resource] = current[resource]
                continue
            for name, tracker in self.trackers.items():
                if sample_always or tracker.needs_samples:
                    share = share_percent(last[name][1], current[name][1],
                                          current[name][0] - last[name][0])
                    self._feed(name, tracker.on_sample(now, share), share)
            last = current

    def _feed(self, resource: str, turns: list[str], share: float | None) -> None:
        shown = self.trackers[resource].trigger_level if share is None else share
        for turn in turns:
            self.on_pressure(resource, turn, shown)

    def _totals(self, directory) -> dict[str, tuple[float, int]] | None:
        now = trio.current_time()
        try:
            return {
                r: (now, rt_pressure.read_pressure(directory, r)["some"].total_us)
                for r in self.trackers
            }
        except (FileNotFoundError, KeyError):
            return None

    def peak_memory_pressure(self) -> float:
        """The highest memory share seen during the run, the 10 s average at
        the end included."""
        peak = self.trackers["memory"].peak
        if self.dirs.unified is not None:
            try:
                stall = rt_pressure.read_pressure(self.dirs.unified, "memory")["some"]
                peak = max(peak, stall.avg10)
            except (FileNotFoundError, KeyError):
                pass
        return round(peak, 2)


class _TriggerSet:
    """The triggers of one run, filled by a worker thread that the run's
    end may leave behind: once abandoned, the set closes what comes after."""

    def __init__(self):
        self._lock = threading.Lock()
        self._abandoned = False
        self.items: list[tuple[str, rt_pressure.Trigger]] = []

    def add(self, resource: str, trigger: rt_pressure.Trigger) -> bool:
        """Keep `trigger`; False, after closing it, when abandoned."""
        with self._lock:
            if not self._abandoned:
                self.items.append((resource, trigger))
                return True
        trigger.close()
        return False

    def abandon(self) -> list[tuple[str, rt_pressure.Trigger]]:
        """The triggers made so far, for the caller to close; later ones
        are closed as they come."""
        with self._lock:
            self._abandoned = True
            items, self.items = self.items, []
        return items


async def _wait_trigger(trigger, resource: str, fired_send) -> None:
    while True:
        await trio.lowlevel.wait_readable(trigger.fd)
        trigger.rearm()
        fired_send.send_nowait(resource)


def _close_all(triggers) -> None:
    for _, trigger in triggers:
        trigger.close()
