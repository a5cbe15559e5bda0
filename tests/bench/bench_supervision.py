#!/usr/bin/env python3
"""Supervision benchmark: restart reaction and stop, corral against Docker and Podman.

Run as root from the repository:

    .venv/bin/python tests/bench/bench_supervision.py
    .venv/bin/python tests/bench/bench_supervision.py --restarts 20 --stops 20 \\
        --engines corral,docker,podman --json /tmp/supervision.json

It prints figures, and ratios against the peers measured in the same run. It
asserts nothing about timings: it exits 0 whether corral meets its targets or
not, and 1 only when the bench itself broke. Engines, their temporary daemons
and roots, the busybox:test image and the clean-up are bench_run.py's (this
script imports them from it), so both benches drive the peers identically;
see bench_run.py's header for the flags each engine gets and what the
clean-up removes.

What is measured, the same way for every engine
------------------------------------------------
Both measures take their moments from the kernel, not from an engine: the
process-event connector (netlink, root only) stamps every fork, exec and
exit with CLOCK_MONOTONIC (time.monotonic_ns() here), however late the bench
reads the event. A container's run is the pair (exec of its PID 1, exit of
that process); engines' own reports (`inspect`, events, logs) are not used.

1. Restart reaction. `run -d --restart always IMAGE sh -c 'exit 1'`: each run
   of the container exits at once with status 1 and the engine restarts it.
   gap = exec of the next run's PID 1 - exit of this run's PID 1; the
   overhead is the gap minus the delay the engine was configured to wait:
     corral  --restart-delay 0 --restart-max-delay 0 (its backoff knobs,
             HostConfig.CorralRestartBackoff), so the gap is pure overhead;
     docker  cannot be configured: 100 ms before restart k (k = 0, 1, ...)
             doubling, 100 ms * 2^k, so the table shows its gaps by restart
             index and its overhead = gap - 100 ms * 2^k;
     podman  cannot be configured either, and never waits: overhead = gap.
   corral@100ms is corral once more with --restart-delay 100ms
   --restart-max-delay 100ms (overhead = gap - 100 ms): a restart after a
   real wait. In a tight loop some kernel work of the previous restart is
   still warm (see the cgroup migration in the report); after 100 ms it is
   not; the peers' restarts never come that close together.
   Docker's doubling makes long runs of one container slow, so every engine
   restarts one container --per-container times (default 5, Docker's delays
   100 ms to 1.6 s), then it is removed (untimed) and a new one takes over,
   until --restarts restarts were measured. Figures are medians over all.
   A container run is recognised from the events alone, since `sh -c 'exit
   1'` is often gone before /proc can be read: a process that exec'd and then
   exited with status 1 within 2 s, whose fork ancestry (fork events since
   the series began) leads back to the bench's own process tree (its
   daemons, shims, conmon), and which, when /proc could still be read at its
   exec, was pid 1 of its own pid namespace in the engine's own cgroup
   parent. Only one engine's container exists during a series.
2. Stop. `run -d IMAGE sh -c 'trap "exit 0" TERM; while :; do sleep 0.1;
   done'`, then, once its PID 1 has forked its first `sleep` (so the trap is
   set) and --settle seconds have passed, `ENGINE stop -t 10 NAME`: the wall
   time of that CLI process, from just before its fork to its exit, median
   of --stops samples. busybox sh runs the trap only when its foreground
   `sleep 0.1` ends, so every figure holds a wait of 0-100 ms that is the
   container's, not the engine's. To give every engine the same waits, the
   CLI of sample i (of N) starts (i + 0.5) / N * 100 ms after PID 1 forked a
   `sleep` (the kernel's fork event): the phases are spread evenly over the
   loop's cycle, the same for every engine, so the wait's median is ~50 ms
   for all of them; "median - 50 ms" is printed as the engine's own share.
   The split rows say where the time goes: CLI start -> PID 1 exit (the
   kernel's exit event), and PID 1 exit -> CLI exit. The moment SIGTERM
   reaches PID 1 leaves no event, but each sample bounds it: if PID 1 exits
   as the `sleep` running at the CLI's start ends, the signal came before
   that end, otherwise after it; the spread phases make these bounds a
   bracket ~100 ms / N wide around each engine's CLI start -> signal time.
   N defaults to 20: each sample's wait is one of N phases, so the median
   moves in steps of ~100 ms / N as an engine's signal time crosses one
   (with 10 samples, 10 ms steps).
   `ENGINE ps -q`, timed the same way, is printed as each engine's floor: a
   CLI call that does nothing but one round trip to the engine.

Restart series and stop samples run round-robin: each iteration runs every
engine (and corral@100ms) once, in an order that rotates from one iteration
to the next. One untimed warm-up series and stop per engine come first. p90 is the
nearest-rank 90th percentile.

For corral (its own corrald) the bench also reads corrald's log, whose
info-level lines carry wall-clock timestamps, and prints where the time of a
restart and of a stop goes: container_exited, restart_scheduled and
container_started, relative to the kernel's events (wall clock and
CLOCK_MONOTONIC are related by an offset read at the same moment).

Targets: corral's restart overhead below 30 ms and its `stop` below 80 ms
(medians); printed as PASS or MISS, never asserted.
"""

import argparse
import itertools
import json
import math
import os
import re
import secrets
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_run as br
from bench_run import (
    BenchError,
    log,
    median,
    p90,
    run_timed,
)

ENGINES = ("corral", "docker", "podman")
EXIT_COMMAND = ["sh", "-c", "exit 1"]
EXIT_STATUS_1 = 1 << 8  # the wait status the kernel reports for exit(1)
TRAP_COMMAND = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 0.1; done']
TRAP_CMDLINE_PREFIX = b"sh\x00-c\x00trap "
STOP_TIMEOUT_S = 10
RUN_MAX_S = 2.0  # a run of `sh -c 'exit 1'` lasting longer is not one
# corral's backoff knobs: an InitialDelay of 0 restarts without delay.
CORRAL_DELAY_S = 0.0
SLOW = "corral@100ms"  # the series label of corral with a 100 ms delay
SLOW_DELAY_S = 0.1
RESTART_FLAGS = {
    "corral": [
        "--restart",
        "always",
        "--restart-delay",
        "0",
        "--restart-max-delay",
        "0",
    ],
    "docker": ["--restart", "always"],
    "podman": ["--restart", "always"],
    # corral again, with a constant delay as long as Docker's first: restarts
    # after a real wait, not in a tight loop (see corral@100ms above).
    SLOW: [
        "--restart",
        "always",
        "--restart-delay",
        "100ms",
        "--restart-max-delay",
        "100ms",
    ],
}
DOCKER_FIRST_DELAY_S = 0.1  # moby's restartmanager: 100 ms, doubling, 1 min cap
DOCKER_MAX_DELAY_S = 60.0
SERIES_SLACK_S = 15.0  # on top of the configured delays, per series
PID1_TIMEOUT_S = 30
TRAP_CYCLE_S = 0.1  # the trap loop's `sleep 0.1`
PHASE_MARGIN_NS = 1_000_000  # a fork seen later than this before its phase waits

TARGET_RESTART_OVERHEAD_MS = 30.0
TARGET_STOP_MS = 80.0

PROC_EVENT_FORK = 0x1
PROC_EVENT_EXIT = 0x80000000
_DATA_OFFSET = br._EVENT_OFFSET + 16  # event_data, after what, cpu, timestamp


def expected_delay_s(engine: str, index: int) -> float:
    """The delay the engine waits before restart number index (from 0)."""
    if engine == "corral":
        return CORRAL_DELAY_S
    if engine == SLOW:
        return SLOW_DELAY_S
    if engine == "docker":
        return min(DOCKER_FIRST_DELAY_S * 2**index, DOCKER_MAX_DELAY_S)
    return 0.0


# ---- process events -------------------------------------------------------------


@dataclass
class Event:
    kind: str  # fork, exec or exit
    time_ns: int  # CLOCK_MONOTONIC, as time.monotonic_ns()
    pid: int  # the process (the child, for a fork)
    parent: int = 0  # fork: the parent process; exit: the parent at exit
    status: int = 0  # exit: the wait status (exit code << 8, or the signal)
    # exec, read from /proc when the event arrived; None: gone by then
    ns_init: bool | None = None
    cgroup: bytes = b""
    cmdline: bytes = b""


class LifecycleWatcher(br.ExecWatcher):
    """bench_run's exec watcher, extended to fork and exit events.

    Threads are left out: fork events whose child is a thread, and exit
    events of threads other than the leader.
    """

    def _parse(self, data: bytes) -> None:
        offset = 0
        while offset + _DATA_OFFSET + 8 <= len(data):
            (length,) = struct.unpack_from("=I", data, offset)
            what, _cpu, stamp = struct.unpack_from(
                "=IIQ", data, offset + br._EVENT_OFFSET
            )
            body = offset + _DATA_OFFSET
            event = None
            if what == PROC_EVENT_FORK:
                _ppid, ptgid, cpid, ctgid = struct.unpack_from("=iiii", data, body)
                if cpid == ctgid:
                    event = Event("fork", stamp, ctgid, parent=ptgid)
            elif what == br.PROC_EVENT_EXEC:
                _pid, tgid = struct.unpack_from("=ii", data, body)
                event = self._exec(stamp, tgid)
            elif what == PROC_EVENT_EXIT and offset + _DATA_OFFSET + 24 <= len(data):
                pid, tgid, code, _sig, _ppid, ptgid = struct.unpack_from(
                    "=iiIIii", data, body
                )
                if pid == tgid:
                    event = Event("exit", stamp, tgid, parent=ptgid, status=code)
            if event is not None:
                with self._lock:
                    if self._armed:
                        self._events.append(event)
            if length < 16:
                break
            offset += (length + 3) & ~3

    def _exec(self, stamp: int, pid: int) -> Event:
        status = br.read_bytes(f"/proc/{pid}/status").decode(errors="replace")
        nspid = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
        return Event(
            "exec",
            stamp,
            pid,
            ns_init=None if not nspid else nspid.group(1).split()[1:][-1:] == ["1"],
            cgroup=br.read_bytes(f"/proc/{pid}/cgroup"),
            cmdline=br.read_bytes(f"/proc/{pid}/cmdline"),
        )


def process_tree(top: int) -> set[int]:
    """top and every process below it now, by parent pid."""
    children: dict[int, list[int]] = {}
    for proc in br.processes():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = set(), [top]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def roots_of(engine: br.Engine) -> set[int]:
    roots = process_tree(os.getpid())
    if getattr(engine, "pid", None):  # a corrald the bench did not start
        roots |= process_tree(engine.pid)
    return roots


def _descends(pid: int, forks: dict[int, int], roots: set[int]) -> bool:
    seen = set()
    while pid in forks and pid not in seen:
        seen.add(pid)
        pid = forks[pid]
        if pid in roots:
            return True
    return False


@dataclass
class ContainerRun:
    exec_ns: int
    exit_ns: int
    pid: int
    confirmed: bool  # seen in /proc as a pid-namespace init in the cgroup parent


def container_runs(
    events: list[Event], roots: set[int], mark: str | None, status: int
) -> list[ContainerRun]:
    """Runs of container PID 1s that exited with the given wait status."""
    forks: dict[int, int] = {}
    execs: dict[int, Event] = {}
    runs = []
    needle = f"/{mark}".encode() if mark else None
    for event in sorted(events, key=lambda e: e.time_ns):
        if event.kind == "fork":
            forks[event.pid] = event.parent
            execs.pop(event.pid, None)
        elif event.kind == "exec":
            execs[event.pid] = event
        else:
            start = execs.pop(event.pid, None)
            if start is None or event.status != status:
                continue
            if event.time_ns - start.time_ns > RUN_MAX_S * 1e9:
                continue
            if start.ns_init is False:
                continue
            if needle and start.cgroup and needle not in start.cgroup:
                continue
            if not _descends(event.pid, forks, roots):
                continue
            confirmed = bool(start.ns_init) and bool(
                start.cgroup and (needle is None or needle in start.cgroup)
            )
            runs.append(
                ContainerRun(start.time_ns, event.time_ns, event.pid, confirmed)
            )
    return runs


# ---- engine calls ----------------------------------------------------------------


def run_argv(engine: br.Engine, name: str, flags: list[str], command: list[str]):
    """The engine's own `run -d` argv (bench_run's flags), named, plus flags."""
    argv, _ = engine.run_d_argv(command)
    at = argv.index("-d", argv.index("run")) + 1
    return argv[:at] + ["--name", name, *flags] + argv[at:]


def engine_argv(engine: br.Engine, *args: str) -> list[str]:
    return [*engine.base, *args]


def remove(engine: br.Engine, name: str) -> None:
    """rm -f, retried: a container caught mid-restart may refuse at first."""
    error = None
    for _attempt in range(5):
        try:
            engine.remove([name])
            engine.live.discard(name)
            return
        except BenchError as err:
            error = err
            if "no such container" in str(err).lower():
                engine.live.discard(name)
                return
            time.sleep(0.5)
    raise BenchError(f"{engine.name}: cannot remove {name}: {error}")


def new_name(kind: str) -> str:
    return f"cbench-{kind}-{secrets.token_hex(4)}"


# ---- measure 1: restart reaction ------------------------------------------------


@dataclass
class Series:
    engine: str
    container_id: str
    runs: list[ContainerRun]
    gaps_ms: list[float]
    confirmed: int  # runs seen in /proc as well as in the events
    wall_offset_ns: int  # time.time_ns() - time.monotonic_ns() at the end
    log_marks: dict = field(default_factory=dict)  # corral: log event times


def restart_series(
    engine: br.Engine, watcher, restarts: int, label: str | None = None
) -> Series:
    """One container restarted `restarts` times; label picks the flags."""
    label = label or engine.name
    budget_s = SERIES_SLACK_S + sum(expected_delay_s(label, k) for k in range(restarts))
    for _attempt in range(3):
        name = new_name("restart")
        roots = roots_of(engine)
        watcher.arm()
        try:
            launched = run_timed(
                run_argv(engine, name, RESTART_FLAGS[label], EXIT_COMMAND),
                engine.env,
            )
        except BenchError:
            watcher.disarm()
            raise
        engine.live.add(name)
        container_id = launched.stdout.strip().splitlines()[-1]
        deadline = time.monotonic() + budget_s
        while True:
            runs = container_runs(
                watcher.events(), roots, engine.cgroup_mark, EXIT_STATUS_1
            )
            if len(runs) > restarts or watcher.overflowed:
                break
            if time.monotonic() > deadline:
                watcher.disarm()
                remove(engine, name)
                raise BenchError(
                    f"{engine.name}: saw {len(runs)} runs of {name} in "
                    f"{budget_s:.0f} s, expected {restarts + 1}"
                )
            time.sleep(0.01)
        events = watcher.disarm()
        offset = time.time_ns() - time.monotonic_ns()
        remove(engine, name)
        if watcher.overflowed:
            log(f"  {engine.name}: process events were dropped; series retaken")
            continue
        runs = container_runs(events, roots, engine.cgroup_mark, EXIT_STATUS_1)
        runs = runs[: restarts + 1]
        gaps = [(b.exec_ns - a.exit_ns) / 1e6 for a, b in itertools.pairwise(runs)]
        if any(g <= 0 for g in gaps):
            raise BenchError(f"{engine.name}: overlapping runs of {name}: {runs}")
        series = Series(
            label,
            container_id,
            runs,
            gaps,
            sum(r.confirmed for r in runs),
            offset,
        )
        if label == "corral":
            series.log_marks = corral_log_marks(engine, container_id)
        return series
    raise BenchError("process events kept being dropped; the host is too busy")


# ---- measure 2: stop -------------------------------------------------------------


@dataclass
class StopSample:
    wall_ms: float
    pid1_exit_ms: float | None  # after the CLI's start
    cli_after_exit_ms: float | None  # CLI exit after PID 1's exit
    phase_ms: float  # CLI start after PID 1 forked its current `sleep 0.1`
    # SIGTERM reached PID 1 before ("<") or after (">") this many ms after
    # the CLI's start: the end of the `sleep` running when the CLI started.
    signal_bound: tuple[str, float] | None = None
    container_id: str = ""
    started_ns: int = 0
    wall_offset_ns: int = 0
    log_marks: dict = field(default_factory=dict)


def stop_sample(
    engine: br.Engine, watcher, settle_s: float, phase_s: float
) -> StopSample:
    for _attempt in range(3):
        name = new_name("stop")
        watcher.arm()
        try:
            launched = run_timed(run_argv(engine, name, [], TRAP_COMMAND), engine.env)
        except BenchError:
            watcher.disarm()
            raise
        engine.live.add(name)
        container_id = launched.stdout.strip().splitlines()[-1]
        pid1 = wait_for_trap(engine, watcher, name)
        time.sleep(settle_s)
        sleep_forked_ns = wait_for_phase(watcher, pid1, phase_s)
        result = run_timed(
            engine_argv(engine, "stop", "-t", str(STOP_TIMEOUT_S), name), engine.env
        )
        time.sleep(0.02)  # let the exit event arrive if it is late
        events = watcher.disarm()
        offset = time.time_ns() - time.monotonic_ns()
        remove(engine, name)
        if watcher.overflowed:
            log(f"  {engine.name}: process events were dropped; sample retaken")
            continue
        exits = [e for e in events if e.kind == "exit" and e.pid == pid1]
        wall_ms = result.wall_ns / 1e6
        exit_ms = after_ms = None
        if exits:
            exit_ms = (exits[0].time_ns - result.started_ns) / 1e6
            after_ms = wall_ms - exit_ms
        sample = StopSample(
            wall_ms,
            exit_ms,
            after_ms,
            (result.started_ns - sleep_forked_ns) / 1e6,
            signal_bound(events, pid1, sleep_forked_ns, result.started_ns),
            container_id,
            result.started_ns,
            offset,
        )
        if engine.name == "corral":
            sample.log_marks = corral_log_marks(engine, container_id)
        return sample
    raise BenchError("process events kept being dropped; the host is too busy")


def signal_bound(events, pid1: int, sleep_forked_ns: int, cli_ns: int):
    """When SIGTERM reached PID 1, relative to the end of the `sleep` that ran
    when the CLI started: sh runs the trap as soon as that sleep ends if the
    signal came before, and a cycle later otherwise."""
    child = next(
        (
            e.pid
            for e in events
            if e.kind == "fork" and e.parent == pid1 and e.time_ns == sleep_forked_ns
        ),
        None,
    )
    ends = [e.time_ns for e in events if e.kind == "exit" and e.pid == child]
    exits = [e.time_ns for e in events if e.kind == "exit" and e.pid == pid1]
    if child is None or not ends or not exits:
        return None
    at_ms = (ends[0] - cli_ns) / 1e6
    if exits[0] - ends[0] < TRAP_CYCLE_S * 1e9 / 2:
        return ("<", at_ms)
    return (">", at_ms)


def signal_bracket(samples: list[StopSample]) -> str | None:
    """CLI start -> SIGTERM at PID 1, bracketed by the samples' bounds."""
    bounds = [s.signal_bound for s in samples if s.signal_bound]
    if not bounds:
        return None
    low = max((ms for side, ms in bounds if side == ">"), default=None)
    high = min((ms for side, ms in bounds if side == "<"), default=None)
    low_text = f"{max(low, 0):.0f}" if low is not None else "0"
    high_text = f"{high:.0f}" if high is not None else "?"
    mark = "" if low is None or high is None or low <= high else " (overlap)"
    return f"{low_text}-{high_text}{mark}"


def wait_for_trap(engine: br.Engine, watcher, name: str) -> int:
    """PID 1 of the trap container, once it has forked its first sleep."""
    needle = f"/{engine.cgroup_mark}".encode() if engine.cgroup_mark else b""
    deadline = time.monotonic() + PID1_TIMEOUT_S
    while time.monotonic() < deadline:
        events = watcher.events()
        pids = {
            e.pid
            for e in events
            if e.kind == "exec"
            and e.ns_init
            and e.cmdline.startswith(TRAP_CMDLINE_PREFIX)
            and needle in e.cgroup
        }
        if len(pids) > 1:
            raise BenchError(f"{engine.name}: saw {len(pids)} PID 1s for {name}")
        if pids:
            pid1 = next(iter(pids))
            if any(e.kind == "fork" and e.parent == pid1 for e in events):
                return pid1
        time.sleep(0.005)
    raise BenchError(
        f"{engine.name}: {name} was not seen running its trap loop as PID 1 "
        f"within {PID1_TIMEOUT_S} s"
    )


def wait_for_phase(watcher, pid1: int, phase_s: float) -> int:
    """Sleep until phase_s after PID 1 forks a `sleep 0.1`; returns that fork's time.

    Waits for a fork seen early enough to sleep until its phase, so the CLI
    starts at a chosen point of the trap loop's 100 ms cycle.
    """
    seen = 0
    deadline = time.monotonic() + PID1_TIMEOUT_S
    while time.monotonic() < deadline:
        forks = [
            e.time_ns for e in watcher.events() if e.kind == "fork" and e.parent == pid1
        ]
        newest = max(forks, default=0)
        if newest > seen:
            wait_ns = newest + int(phase_s * 1e9) - time.monotonic_ns()
            if wait_ns > PHASE_MARGIN_NS:
                time.sleep(wait_ns / 1e9)
                return newest
            seen = newest
        time.sleep(0.001)
    raise BenchError(f"PID 1 (pid {pid1}) stopped forking its `sleep 0.1`")


def floor_sample(engine: br.Engine) -> float:
    return run_timed(engine_argv(engine, "ps", "-q"), engine.env).wall_ns / 1e6


# ---- corrald's log ---------------------------------------------------------------

LOG_EVENTS = (
    "container_exited",
    "restart_scheduled",
    "container_started",
    "container_stopped",
)


def corral_log_marks(engine: br.Engine, container_id: str) -> dict:
    """Wall-clock ns of corrald's log events for one container, in order."""
    path = getattr(engine, "log_path", None)
    if path is None:
        return {}
    marks: dict[str, list[int]] = {name: [] for name in LOG_EVENTS}
    for line in path.read_text(errors="replace").splitlines():
        if container_id not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("container") != container_id or entry.get("event") not in marks:
            continue
        stamp = datetime.fromisoformat(entry["timestamp"])
        marks[entry["event"]].append(int(stamp.timestamp() * 1e6) * 1000)
    return marks


def restart_timeline(series: list[Series]) -> dict | None:
    """Medians, ms after the kernel's exit of a run, of corrald's log events
    for the restart that follows it and of the next PID 1's exec."""
    steps: dict[str, list[float]] = {
        "container_exited": [],
        "restart_scheduled": [],
        "container_started": [],
        "next PID 1 exec (kernel)": [],
    }
    for s in series:
        if not s.log_marks:
            continue
        for k, (run, following) in enumerate(itertools.pairwise(s.runs)):
            exit_wall = run.exit_ns + s.wall_offset_ns
            for name in ("container_exited", "restart_scheduled"):
                if k < len(s.log_marks[name]):
                    steps[name].append((s.log_marks[name][k] - exit_wall) / 1e6)
            # container_started [0] is the `run -d`; [k + 1] follows exit k.
            started = s.log_marks["container_started"]
            if k + 1 < len(started):
                steps["container_started"].append((started[k + 1] - exit_wall) / 1e6)
            steps["next PID 1 exec (kernel)"].append(
                (following.exec_ns - run.exit_ns) / 1e6
            )
    if not steps["next PID 1 exec (kernel)"] or not steps["container_exited"]:
        return None
    return {name: median(values) for name, values in steps.items()}


def stop_timeline(samples: list[StopSample]) -> dict | None:
    """Medians, ms after the CLI's start, of the kernel's and corrald's events."""
    steps: dict[str, list[float]] = {
        "PID 1 exit (kernel)": [],
        "container_exited": [],
        "container_stopped": [],
        "CLI exit": [],
    }
    for s in samples:
        if not s.log_marks or s.pid1_exit_ms is None:
            continue
        start_wall = s.started_ns + s.wall_offset_ns
        steps["PID 1 exit (kernel)"].append(s.pid1_exit_ms)
        for name in ("container_exited", "container_stopped"):
            if s.log_marks[name]:
                steps[name].append((s.log_marks[name][-1] - start_wall) / 1e6)
        steps["CLI exit"].append(s.wall_ms)
    if not steps["CLI exit"]:
        return None
    return {name: median(values) for name, values in steps.items()}


# ---- the run ---------------------------------------------------------------------


@dataclass
class Results:
    series: dict = field(default_factory=dict)  # engine -> [Series]
    stops: dict = field(default_factory=dict)  # engine -> [StopSample]
    floors: dict = field(default_factory=dict)  # engine -> [ms]


def run_measures(engines, watcher, ctx, args) -> Results:
    results = Results()
    for engine in engines:
        results.series[engine.name] = []
        results.stops[engine.name] = []
        results.floors[engine.name] = []
    results.series[SLOW] = []
    # Restart series of every engine, and of corral with a real delay.
    variants = [(e.name, e) for e in engines]
    variants.insert(1, (SLOW, engines[0]))
    log("warm-up: one untimed restart series, stop and ps per engine")
    for engine in engines:
        restart_series(engine, watcher, 1)
        stop_sample(engine, watcher, args.settle, TRAP_CYCLE_S / 2)
        floor_sample(engine)
        br.settle(ctx, args.settle)
    sizes = series_sizes(args.restarts, args.per_container)
    for i, size in enumerate(sizes):
        shift = i % len(variants)
        for label, engine in variants[shift:] + variants[:shift]:
            series = restart_series(engine, watcher, size, label)
            results.series[label].append(series)
            br.settle(ctx, args.settle)
        log(
            f"[restarts {i + 1}/{len(sizes)}] "
            + "  ".join(
                f"{label}: "
                + ", ".join(f"{g:.0f}" for g in results.series[label][-1].gaps_ms)
                + " ms"
                for label, _ in variants
            )
        )
    for i in range(args.stops):
        for engine in br.rotated(engines, i):
            phase_s = (i + 0.5) / args.stops * TRAP_CYCLE_S
            sample = stop_sample(engine, watcher, args.settle, phase_s)
            results.stops[engine.name].append(sample)
            br.settle(ctx, args.settle)
            results.floors[engine.name].append(floor_sample(engine))
            br.settle(ctx, args.settle)
        log(
            f"[stops {i + 1}/{args.stops}] "
            + "  ".join(
                f"{e.name}: {results.stops[e.name][-1].wall_ms:.0f} ms" for e in engines
            )
        )
    return results


def series_sizes(total: int, per_container: int) -> list[int]:
    count = math.ceil(total / per_container)
    return [min(per_container, total - k * per_container) for k in range(count)]


# ---- figures and report ----------------------------------------------------------


def restart_figures(label: str, series: list[Series]) -> dict:
    gaps, overheads, by_index = [], [], {}
    for s in series:
        for k, gap in enumerate(s.gaps_ms):
            over = gap - expected_delay_s(label, k) * 1e3
            gaps.append(gap)
            overheads.append(over)
            by_index.setdefault(k, {"gap": [], "overhead": []})
            by_index[k]["gap"].append(gap)
            by_index[k]["overhead"].append(over)
    runs = sum(len(s.runs) for s in series)
    return {
        "restart_gap_ms": {"median": median(gaps), "p90": p90(gaps)},
        "restart_overhead_ms": {"median": median(overheads), "p90": p90(overheads)},
        "restart_by_index": {
            k: {
                "delay_ms": expected_delay_s(label, k) * 1e3,
                "gap_ms": median(v["gap"]),
                "overhead_ms": median(v["overhead"]),
                "samples": len(v["gap"]),
            }
            for k, v in sorted(by_index.items())
        },
        "restarts_measured": len(gaps),
        "runs_confirmed_in_proc": f"{sum(s.confirmed for s in series)}/{runs}",
    }


def summarize(engines, results: Results) -> dict:
    figures = {}
    for engine in engines:
        name = engine.name
        stops = results.stops[name]
        walls = [s.wall_ms for s in stops]
        to_exit = [s.pid1_exit_ms for s in stops if s.pid1_exit_ms is not None]
        after = [s.cli_after_exit_ms for s in stops if s.cli_after_exit_ms is not None]
        figures[name] = {
            "version": engine.version,
            **restart_figures(name, results.series[name]),
            "stop_ms": {
                "median": median(walls),
                "p90": p90(walls),
                "mean": _mean(walls),
                "share": None if not walls else median(walls) - TRAP_CYCLE_S * 500,
            },
            "stop_to_pid1_exit_ms": {"median": median(to_exit), "p90": p90(to_exit)},
            "stop_after_pid1_exit_ms": {"median": median(after), "p90": p90(after)},
            "stop_to_signal_ms": {"bracket": signal_bracket(stops)},
            "ps_ms": {"median": median(results.floors[name])},
        }
        if name == "corral":
            slow = restart_figures(SLOW, results.series[SLOW])
            figures[name]["restart_overhead_100ms_ms"] = slow["restart_overhead_ms"]
            figures[SLOW] = slow
            figures[name]["restart_timeline_ms"] = restart_timeline(
                results.series[name]
            )
            figures[name]["stop_timeline_ms"] = stop_timeline(stops)
    return figures


def _mean(values):
    return sum(values) / len(values) if values else None


ROWS = [
    # label, figure key, sub key
    ("restart gap: exit -> next PID 1 exec, median", "restart_gap_ms", "median"),
    ("restart gap, p90", "restart_gap_ms", "p90"),
    (
        "restart overhead: gap - configured delay, median",
        "restart_overhead_ms",
        "median",
    ),
    ("restart overhead, p90", "restart_overhead_ms", "p90"),
    (
        "restart overhead, corral with a 100 ms delay, median",
        "restart_overhead_100ms_ms",
        "median",
    ),
    (
        "restart overhead, corral with a 100 ms delay, p90",
        "restart_overhead_100ms_ms",
        "p90",
    ),
    ("stop -t 10 (trap TERM), median", "stop_ms", "median"),
    ("stop -t 10, p90", "stop_ms", "p90"),
    ("stop -t 10, mean", "stop_ms", "mean"),
    ("stop -t 10, median - 50 ms (the engine's share)", "stop_ms", "share"),
    ("  CLI start -> SIGTERM at PID 1 (bracket)", "stop_to_signal_ms", "bracket"),
    ("  CLI start -> PID 1 exit, median", "stop_to_pid1_exit_ms", "median"),
    ("  PID 1 exit -> CLI exit, median", "stop_after_pid1_exit_ms", "median"),
    ("ps -q (CLI round-trip floor), median", "ps_ms", "median"),
]


def _fmt(value, ratio=False) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if ratio:
        return f"{value:.2f}x"
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def _ratio(mine, peer):
    if not isinstance(mine, float | int) or not isinstance(peer, float | int):
        return None
    if peer <= 0 or mine < 0:
        return None
    return mine / peer


def print_table(engines, figures: dict) -> None:
    names = [e.name for e in engines]
    peers = [p for p in br.PEERS if p in figures]
    rows = [["measure (ms)", *names, *[f"corral/{p}" for p in peers]]]
    for label, key, sub in ROWS:
        values = [br._get(figures[n], key, sub) for n in names]
        mine = br._get(figures["corral"], key, sub)
        ratios = [_ratio(mine, br._get(figures[p], key, sub)) for p in peers]
        rows.append(
            [label, *[_fmt(v) for v in values], *[_fmt(r, True) for r in ratios]]
        )
    br._print_rows(rows)
    print(
        "(ratios: corral's figure over the peer's, below 1 is better; configured "
        "delay: corral 0, docker 100 ms * 2^k before restart k, podman none)"
    )


def print_by_index(engines, figures: dict) -> None:
    """Gaps and overheads by restart index, Docker's delay beside them."""
    print()
    labels = [e.name for e in engines]
    labels.insert(1, SLOW)
    heads = ["restart k", "n"]
    for label in labels:
        if label == "docker":
            heads.append("docker delay")
        heads += [f"{label} gap", f"{label} overhead"]
    rows = [heads]
    indexes = sorted({k for n in labels for k in figures[n]["restart_by_index"]})
    for k in indexes:
        samples = {
            figures[n]["restart_by_index"].get(k, {}).get("samples") for n in labels
        }
        row = [str(k), "/".join(str(n) for n in sorted(samples - {None}))]
        for label in labels:
            entry = figures[label]["restart_by_index"].get(k) or {}
            if label == "docker":
                row.append(_fmt(entry.get("delay_ms")))
            row += [_fmt(entry.get("gap_ms")), _fmt(entry.get("overhead_ms"))]
        rows.append(row)
    br._print_rows(rows)
    print(
        "(medians in ms by restart index within one container's series, n samples "
        f"each; delays: corral 0, {SLOW} 100 ms, docker as shown, podman none)"
    )


def print_timelines(figures: dict) -> None:
    corral = figures.get("corral", {})
    restart, stop = corral.get("restart_timeline_ms"), corral.get("stop_timeline_ms")
    if restart:
        print()
        print(
            "corral restart, from corrald's log (medians, ms after the kernel's exit "
            "event of the run):"
        )
        for name, value in restart.items():
            print(f"  {name:<28} {_fmt(value):>7}")
    if stop:
        print()
        print("corral stop, from corrald's log (medians, ms after the CLI's start):")
        for name, value in stop.items():
            print(f"  {name:<28} {_fmt(value):>7}")


def targets(figures: dict) -> list[dict]:
    corral = figures["corral"]
    over = corral["restart_overhead_ms"]["median"]
    stop = corral["stop_ms"]["median"]
    return [
        {
            "target": f"corral restart overhead < {TARGET_RESTART_OVERHEAD_MS:.0f} ms "
            "(median, delay 0)",
            "measured": f"{over:.1f} ms" if over is not None else "not measured",
            "pass": None if over is None else over < TARGET_RESTART_OVERHEAD_MS,
        },
        {
            "target": f"corral stop -t 10 of a TERM-trapping PID 1 < "
            f"{TARGET_STOP_MS:.0f} ms (median)",
            "measured": f"{stop:.1f} ms" if stop is not None else "not measured",
            "pass": None if stop is None else stop < TARGET_STOP_MS,
        },
    ]


def report(engines, skipped, figures, args) -> list[dict]:
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(
        f"restarts: {args.restarts} per engine, {args.per_container} per container; "
        f"stops: {args.stops} per engine; round-robin in rotating order after one "
        "warm-up"
    )
    for engine in engines:
        confirmed = figures[engine.name]["runs_confirmed_in_proc"]
        print(
            f"  {engine.name}: {engine.version}; container runs also seen in /proc: "
            f"{confirmed}"
        )
    for name, reason in skipped.items():
        print(f"  {name}: skipped ({reason})")
    print()
    print_table(engines, figures)
    print_by_index(engines, figures)
    print_timelines(figures)
    found = targets(figures)
    br.print_targets(found)
    return found


def write_json(args, host, skipped, figures, results: Results, found) -> None:
    doc = {
        "host": host,
        "load_average_at_end": os.getloadavg()[0],
        "options": {k: v for k, v in vars(args).items() if k != "json"},
        "skipped": skipped,
        "figures": figures,
        "samples": {
            "restart_gaps_ms": {
                n: [s.gaps_ms for s in series] for n, series in results.series.items()
            },
            "stops": {
                n: [
                    {k: v for k, v in asdict(s).items() if k != "log_marks"}
                    for s in samples
                ]
                for n, samples in results.stops.items()
            },
            "ps_ms": results.floors,
        },
        "targets": found,
    }
    args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    log(f"wrote {args.json}")


# ---- main ------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Measure restart reaction and stop of corral against docker "
        "and podman, interleaved in one run."
    )
    parser.add_argument(
        "--restarts", type=int, default=20, help="restarts per engine (default 20)"
    )
    parser.add_argument(
        "--per-container",
        type=int,
        default=5,
        help="restarts of one container before a new one takes over; Docker's "
        "delay doubles each time (default 5: 100 ms to 1.6 s)",
    )
    parser.add_argument(
        "--stops", type=int, default=20, help="stops per engine (default 20)"
    )
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="comma-separated; corral is always measured (default "
        + ",".join(ENGINES)
        + ")",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.3,
        help="seconds between samples, and between a container's start and its "
        "stop (default 0.3)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.restarts < 1 or args.per_container < 1 or args.stops < 1:
        parser.error("--restarts, --per-container and --stops must be positive")
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = set(names) - set(ENGINES)
    if unknown:
        parser.error(
            f"unknown engine(s) {', '.join(sorted(unknown))}; choose from "
            + ", ".join(ENGINES)
        )
    args.engine_names = ["corral"] + [n for n in names if n != "corral"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def measure(ctx, engines, skipped, watcher, host):
        if not engines or engines[0].name != "corral":
            raise BenchError("corral could not be started")
        results = run_measures(engines, watcher, ctx, args)
        figures = summarize(engines, results)
        found = report(engines, skipped, figures, args)
        if args.json:
            write_json(args, host, skipped, figures, results, found)

    return br.run_bench("bench_supervision.py", args.engine_names, measure,
                        LifecycleWatcher)


if __name__ == "__main__":
    sys.exit(main())
