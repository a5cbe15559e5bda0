#!/usr/bin/env python3
"""Cgroup watcher benchmark: OOM detection latency against Docker and Podman,
and corrald's CPU use while it watches idle containers.

Run as root from the repository:

    .venv/bin/python tests/bench/bench_watchers.py
    .venv/bin/python tests/bench/bench_watchers.py --samples 20 --idle 100 \\
        --engines corral,docker,podman --json /tmp/watchers.json

It prints figures and ratios against the peers measured in the same run, and
asserts nothing about timings: it exits 0 whether corral meets its targets
or not, 1 only when the bench itself broke. Engines, their temporary daemons
and the clean-up are bench_run.py's, so every bench drives the peers alike.

What is measured
----------------
1. OOM detection. `run -d -m 32m --memory-swap 32m IMAGE sh -c 'wait for /go;
   exec dd if=/dev/zero of=/dev/null bs=256M count=1'`; once it runs, `exec
   NAME touch /go` lets dd allocate, and the kernel OOM-kills it. The kill's
   moment is the kernel's exit event of PID 1 (process connector, stamped
   with CLOCK_MONOTONIC). The engine's `events --format '{{json .}}'` runs
   all along; each line is stamped when the bench reads it. oom latency =
   arrival of the container's `oom` event - PID 1's exit; die latency the
   same for `die`. Negative: the event came before the exit was complete
   (the OOM notification precedes the victim's death). Also counted: how
   often inspect showed OOMKilled=true. Samples interleave the engines.
2. Idle watching (corral only): --idle `sleep` containers are started, then
   corrald's CPU time (utime + stime in /proc/PID/stat) is read over
   --idle-seconds. Every container has its OOM watch (inotify or eventfd)
   and its pressure triggers set, so this is the cost of watching itself.

Targets: `oom` within 5 ms of the kill and `die` within 10 ms (medians);
under 1 % of one core for 100 idle containers. Printed as PASS or MISS.
"""

import argparse
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_run as br
import bench_supervision as bs
from bench_run import BenchError, log, median

ENGINES = ("corral", "docker", "podman")
HOG = (
    "while [ ! -f /go ]; do sleep 0.02; done; "
    "exec dd if=/dev/zero of=/dev/null bs=256M count=1"
)
MEMORY_FLAGS = ["-m", "32m", "--memory-swap", "32m"]
EVENT_WAIT_S = 5.0


class EventStream:
    """An engine's `events --format '{{json .}}'`, each line stamped on arrival."""

    def __init__(self, engine: br.Engine):
        self.proc = subprocess.Popen(
            [*engine.base, "events", "--format", "{{json .}}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=engine.env,
        )
        self.lines: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            stamp = time.monotonic_ns()
            offset = time.time_ns() - time.monotonic_ns()
            try:
                event = json.loads(line)
            except ValueError:
                continue
            event["_published_mono_ns"] = event.get("timeNano", 0) - offset
            self.lines.put((stamp, event))

    def wait_for(self, name: str, actions: set[str], timeout_s: float) -> dict:
        """{action: arrival ns} of the first of each action for container name."""
        found: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        while not actions <= set(found) and time.monotonic() < deadline:
            try:
                stamp, event = self.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            attrs = event.get("Actor", {}).get("Attributes", {})
            action = event.get("Action") or event.get("status")
            if attrs.get("name") == name and action in actions:
                found.setdefault(action, stamp)
                found.setdefault(action + "_published", event["_published_mono_ns"])
        return found

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def inspect(engine: br.Engine, name: str, template: str) -> str:
    return br.run_quiet([*engine.base, "inspect", "-f", template, name],
                        engine.env).strip()


def oom_sample(engine: br.Engine, stream: EventStream, watcher) -> dict:
    name = f"cbench-oom-{secrets.token_hex(4)}"
    br.run_quiet(bs.run_argv(engine, name, MEMORY_FLAGS, ["sh", "-c", HOG]), engine.env)
    engine.live.add(name)
    try:
        pid1 = int(inspect(engine, name, "{{.State.Pid}}"))
        watcher.arm()
        br.run_quiet([*engine.base, "exec", name, "touch", "/go"], engine.env)
        found = stream.wait_for(name, {"oom", "die"}, EVENT_WAIT_S)
        events = watcher.disarm()
        exits = [e.time_ns for e in events if e.kind == "exit" and e.pid == pid1]
        if not exits:
            raise BenchError(f"{engine.name}: saw no exit of PID 1 ({pid1}) of {name}")
        killed_ns = exits[0]
        flag = inspect(engine, name, "{{.State.OOMKilled}}") == "true"
    finally:
        bs.remove(engine, name)
    return {
        "oom_ms": (found["oom"] - killed_ns) / 1e6 if "oom" in found else None,
        "die_ms": (found["die"] - killed_ns) / 1e6 if "die" in found else None,
        "die_published_ms": (found["die_published"] - killed_ns) / 1e6
        if "die" in found else None,
        "oom_killed": flag,
    }


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def idle_cpu_percent(engine: br.Corral, count: int, seconds: float) -> dict:
    argv = lambda i: bs.run_argv(engine, f"cbench-idle-{i}", [], ["sleep", "3600"])  # noqa: E731
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: br.run_quiet(argv(i), engine.env), range(count)))
    names = [f"cbench-idle-{i}" for i in range(count)]
    engine.live.update(names)
    try:
        time.sleep(5)
        before, started = cpu_ticks(engine.pid), time.monotonic()
        time.sleep(seconds)
        ticks, elapsed = cpu_ticks(engine.pid) - before, time.monotonic() - started
    finally:
        engine.remove_all(names)
    cpu_s = ticks / os.sysconf("SC_CLK_TCK")
    return {"containers": count, "seconds": round(elapsed, 1),
            "cpu_s": round(cpu_s, 3), "percent_of_one_core": 100 * cpu_s / elapsed}


def run_measures(engines, watcher, args) -> dict:
    streams = {e.name: EventStream(e) for e in engines}
    samples: dict[str, list[dict]] = {e.name: [] for e in engines}
    try:
        time.sleep(1)
        for engine in engines:
            oom_sample(engine, streams[engine.name], watcher)  # warm-up
        for i in range(args.samples):
            for engine in br.rotated(engines, i):
                samples[engine.name].append(
                    oom_sample(engine, streams[engine.name], watcher))
            log(f"[{i + 1}/{args.samples}] " + "  ".join(
                f"{name}: oom {_ms(s[-1]['oom_ms'])}, die {_ms(s[-1]['die_ms'])}"
                f" (published {_ms(s[-1]['die_published_ms'])})"
                for name, s in samples.items()))
    finally:
        for stream in streams.values():
            stream.close()
    corral = next(e for e in engines if e.name == "corral")
    log(f"idle watching: {args.idle} containers for {args.idle_seconds:g} s")
    idle = idle_cpu_percent(corral, args.idle, args.idle_seconds)
    return {"samples": samples, "idle": idle}


def summarize(results: dict) -> dict:
    figures = {}
    for name, samples in results["samples"].items():
        ooms = [s["oom_ms"] for s in samples if s["oom_ms"] is not None]
        dies = [s["die_ms"] for s in samples if s["die_ms"] is not None]
        figures[name] = {
            "samples": len(samples),
            "oom_events": len(ooms),
            "oom_killed_true": sum(s["oom_killed"] for s in samples),
            "oom_ms": median(ooms) if ooms else None,
            "die_ms": median(dies) if dies else None,
        }
    return figures


def _ms(value) -> str:
    return "-" if value is None else f"{value:+.1f} ms"


def report(engines, skipped, figures, idle) -> list[dict]:
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    for engine in engines:
        print(f"  {engine.name}: {engine.version}")
    for name, reason in skipped.items():
        print(f"  {name}: skipped ({reason})")
    print()
    print(f"{'':34}" + "".join(f"{e.name:>14}" for e in engines))
    rows = [
        ("oom event after the kill (median)", "oom_ms", _ms),
        ("die event after the kill (median)", "die_ms", _ms),
        ("oom events / samples", None, None),
        ("OOMKilled=true / samples", "oom_killed_true", None),
    ]
    for label, key, fmt in rows:
        cells = []
        for engine in engines:
            f = figures[engine.name]
            if key is None:
                cells.append(f"{f['oom_events']}/{f['samples']}")
            elif fmt is None:
                cells.append(f"{f[key]}/{f['samples']}")
            else:
                cells.append(fmt(f[key]))
        print(f"{label:34}" + "".join(f"{c:>14}" for c in cells))
    print()
    print(f"corrald watching {idle['containers']} idle containers: "
          f"{idle['cpu_s']} s of CPU in {idle['seconds']} s = "
          f"{idle['percent_of_one_core']:.2f} % of one core")
    mine = figures["corral"]
    found = [
        _target("oom event within 5 ms of the kill", mine["oom_ms"], 5.0),
        _target("die event within 10 ms of the kill", mine["die_ms"], 10.0),
        _target("idle watching under 1 % of one core",
                idle["percent_of_one_core"], 1.0),
    ]
    print()
    for t in found:
        print(f"{'PASS' if t['met'] else 'MISS'}  {t['target']}: {t['value']}")
    return found


def _target(text: str, value, limit: float) -> dict:
    return {"target": text, "value": None if value is None else round(value, 2),
            "met": value is not None and value <= limit}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20,
                        help="OOM kills per engine (default 20)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="comma-separated; corral is always measured")
    parser.add_argument("--idle", type=int, default=100,
                        help="idle containers for the CPU measure (default 100)")
    parser.add_argument("--idle-seconds", type=float, default=30,
                        help="how long to measure idle CPU (default 30)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    names = [n for n in args.engines.split(",") if n]
    args.engine_names = ["corral", *[n for n in names if n != "corral"]]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def measure(ctx, engines, skipped, watcher, host):
        results = run_measures(engines, watcher, args)
        figures = summarize(results)
        found = report(engines, skipped, figures, results["idle"])
        if args.json:
            args.json.write_text(json.dumps(
                {"figures": figures, "idle": results["idle"], "targets": found,
                 "samples": results["samples"], "skipped": skipped}, indent=2) + "\n")

    return br.run_bench("bench_watchers.py", args.engine_names, measure,
                        bs.LifecycleWatcher)


if __name__ == "__main__":
    sys.exit(main())
