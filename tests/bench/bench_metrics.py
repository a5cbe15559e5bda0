#!/usr/bin/env python3
"""Metrics and stats benchmark: one full /metrics scrape of corrald with 10,
100 and 500 running containers, against `docker stats --no-stream` and
against reading the same cgroup files directly.

Run as root from the repository:

    .venv/bin/python tests/bench/bench_metrics.py
    .venv/bin/python tests/bench/bench_metrics.py --counts 10,100 --scrapes 9 \\
        --engines corral --json /tmp/metrics.json

It prints figures and ratios measured in the same run, and asserts nothing
about timings: it exits 0 whether corral meets its targets or not, 1 only
when the bench itself broke. Engines, their temporary daemons and the
clean-up are bench_run.py's.

What is measured
----------------
Containers are `run -d IMAGE sleep 3600`, started 8 at a time and added
from one count to the next (10, then 40 more, then 50, then 400). At each
count, with every container running:

1. scrape: wall time of GET /metrics on corrald's API socket, from the
   request to the last byte, median of --scrapes; and the daemon's own
   corral_metrics_scrape_duration_seconds (reading and writing only).
   Cost per container is the difference between two counts over the
   difference in containers, so what every scrape costs anyway drops out.
2. event-loop lag during the scrapes: a thread sends GET /_ping back to back
   on its own connection the whole time; its slowest and median reply
   during the scrapes, against the same while idle. And corrald's own
   corral_daemon_event_loop_wakeup_lag_seconds over the scrapes: how many
   of its 100 ms wake-ups came later than 5 ms and 25 ms.
3. the floor: runtime.cgstats.read_sample of every container in this
   process (the files a scrape reads, minus pressure), median of --scrapes.
4. `docker stats --no-stream`: wall time of the CLI, median of 3, for the
   same counts up to --docker-max, when dockerd is installed.
5. at 50 containers: GET /stats (every container's stats in one call) and,
   for one container, GET /containers/ID/stats?stream=false, medians of
   --stats-calls, each against the floor of reading the same containers.

Targets: a scrape of 100 containers within 100 ms; the cost per container
from 100 to 500 within 1.5x of that from 10 to 100 (linear growth); each
stats call under 2x its floor. Printed as PASS or MISS.
"""

import argparse
import http.client
import itertools
import json
import os
import re
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import bench_run as br
import bench_supervision as bs
from bench_run import BenchError, log, median

from runtime import cgstats
from runtime.cgroups import CgroupManager

ENGINES = ("corral", "docker")
STATS_COUNT = 50
LAG = "corral_daemon_event_loop_wakeup_lag_seconds"


class UnixHTTP(http.client.HTTPConnection):
    """The standard library's HTTP client over a unix socket."""

    def __init__(self, path: str):
        super().__init__("localhost", timeout=120)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)

    def get(self, path: str) -> bytes:
        self.request("GET", path)
        reply = self.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise BenchError(f"GET {path} answered {reply.status}: {body[:200]!r}")
        return body


class Pinger:
    """GET /_ping back to back on its own connection; every reply's time."""

    def __init__(self, socket_path: str):
        self._conn = UnixHTTP(socket_path)
        self.samples: list[tuple[float, float]] = []  # (sent at, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            self._conn.get("/_ping")
            self.samples.append((sent, time.monotonic() - sent))
            time.sleep(0.002)

    def between(self, start: float, end: float) -> list[float]:
        return [s for sent, s in self.samples if start <= sent <= end]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


def corral_socket(engine: br.Corral) -> str:
    return engine.host.removeprefix("unix://")


def start_containers(engine: br.Engine, first: int, last: int) -> None:
    names = [f"cbench-m-{i}" for i in range(first, last)]
    argv = [bs.run_argv(engine, n, [], ["sleep", "3600"]) for n in names]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda a: br.run_quiet(a, engine.env), argv))
    engine.live.update(names)


def running_cgroups(engine: br.Corral, conn: UnixHTTP) -> dict[str, tuple]:
    """{container id: (CgroupDirs, pid 1)} of every running corral container."""
    manager = CgroupManager(parent=engine.cgroup_parent)
    found = {}
    for summary in json.loads(conn.get("/containers/json")):
        state = json.loads(conn.get(f"/containers/{summary['Id']}/json"))["State"]
        found[summary["Id"]] = (manager.open(summary["Id"]).dirs, state["Pid"])
    return found


def floor_s(cgroups: list[tuple], repeats: int) -> float:
    """Median time to read every given cgroup's sample in this process."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for dirs, pid in cgroups:
            cgstats.read_sample(dirs, pid)
        times.append(time.perf_counter() - started)
    return median(times)


def lag_buckets(text: str) -> dict[str, float]:
    found = {}
    for match in re.finditer(rf'^{LAG}_bucket{{le="([^"]+)"}} (\S+)$', text, re.MULTILINE):
        found[match.group(1)] = float(match.group(2))
    return found


def daemon_scrape_s(text: str) -> float:
    found = re.search(r"^corral_metrics_scrape_duration_seconds (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


def measure_scrapes(engine: br.Corral, conn: UnixHTTP, pinger: Pinger,
                    count: int, repeats: int) -> dict:
    conn.get("/metrics")  # warm-up
    time.sleep(0.5)
    idle_end = time.monotonic()
    idle = pinger.between(idle_end - 0.5, idle_end)
    walls, inside, bodies = [], [], []
    started = time.monotonic()
    for _ in range(repeats):
        t0 = time.perf_counter()
        body = conn.get("/metrics").decode()
        walls.append(time.perf_counter() - t0)
        bodies.append(body)
        inside.append(daemon_scrape_s(body))
    during = pinger.between(started, time.monotonic())
    before, after = lag_buckets(bodies[0]), lag_buckets(bodies[-1])
    wakeups = after.get("+Inf", 0) - before.get("+Inf", 0)

    def later_than(edge: str) -> float:
        return wakeups - (after.get(edge, 0) - before.get(edge, 0))

    series = sum(1 for line in bodies[-1].splitlines() if line and line[0] != "#")
    return {
        "containers": count,
        "series": series,
        "bytes": len(bodies[-1]),
        "scrape_s": median(walls),
        "daemon_render_s": median(inside[1:]) if len(inside) > 1 else None,
        "ping_idle_max_s": max(idle) if idle else None,
        "ping_idle_median_s": median(idle),
        "ping_during_max_s": max(during) if during else None,
        "ping_during_median_s": median(during),
        "wakeups": wakeups,
        "wakeups_late_5ms": later_than("0.005"),
        "wakeups_late_25ms": later_than("0.025"),
    }


def measure_stats(conn: UnixHTTP, cgroups: dict[str, tuple], calls: int) -> dict:
    one = next(iter(cgroups))
    single, batch = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        conn.get(f"/containers/{one}/stats?stream=false")
        single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        conn.get("/stats")
        batch.append(time.perf_counter() - t0)
    return {
        "containers": len(cgroups),
        "single_s": median(single),
        "single_floor_s": floor_s([cgroups[one]], calls),
        "batch_s": median(batch),
        "batch_floor_s": floor_s(list(cgroups.values()), calls),
    }


def docker_stats_s(engine: br.Engine, repeats: int) -> float:
    argv = [*engine.base, "stats", "--no-stream"]
    return median([br.run_timed(argv, engine.env).wall_ns / 1e9
                   for _ in range(repeats)])


def run_measures(engines: list[br.Engine], args) -> dict:
    corral = next(e for e in engines if e.name == "corral")
    docker = next((e for e in engines if e.name == "docker"), None)
    conn = UnixHTTP(corral_socket(corral))
    pinger = Pinger(corral_socket(corral))
    results = {"scrapes": [], "floors": {}, "docker": {}, "stats": None}
    have = 0
    try:
        for count in sorted(set(args.counts) | {STATS_COUNT}):
            log(f"starting containers up to {count}")
            start_containers(corral, have, count)
            if docker is not None and count <= args.docker_max:
                start_containers(docker, have, count)
            have = count
            time.sleep(2)
            cgroups = running_cgroups(corral, conn)
            if len(cgroups) != count:
                raise BenchError(f"corral runs {len(cgroups)} containers, not {count}")
            if count == STATS_COUNT:
                results["stats"] = measure_stats(conn, cgroups, args.stats_calls)
            if count not in args.counts:
                continue
            scrape = measure_scrapes(corral, conn, pinger, count, args.scrapes)
            scrape["floor_s"] = floor_s(list(cgroups.values()), args.scrapes)
            results["scrapes"].append(scrape)
            if docker is not None and count <= args.docker_max:
                results["docker"][count] = docker_stats_s(docker, 3)
            log(f"  {count}: scrape {_ms(scrape['scrape_s'])}, floor "
                f"{_ms(scrape['floor_s'])}, docker stats "
                f"{_ms(results['docker'].get(count))}")
    finally:
        pinger.close()
        conn.close()
    return results


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _per_container(scrapes: list[dict], key: str) -> list[tuple]:
    """(from, to, seconds per container) between consecutive counts."""
    steps = []
    for low, high in itertools.pairwise(scrapes):
        added = high["containers"] - low["containers"]
        steps.append((low["containers"], high["containers"],
                      (high[key] - low[key]) / added))
    return steps


def report(engines, skipped, results, args) -> list[dict]:
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    for engine in engines:
        print(f"  {engine.name}: {engine.version}")
    for name, reason in skipped.items():
        print(f"  {name}: skipped ({reason})")
    print(f"scrapes: median of {args.scrapes} over the API socket; docker stats: "
          f"median of 3, up to {args.docker_max} containers")
    print()
    head = ("containers", "series", "scrape", "in daemon", "floor", "ratio",
            "docker stats")
    print("".join(f"{h:>13}" for h in head))
    scrapes = results["scrapes"]
    for s in scrapes:
        docker = results["docker"].get(s["containers"])
        cells = [str(s["containers"]), str(s["series"]), _ms(s["scrape_s"]),
                 _ms(s["daemon_render_s"]), _ms(s["floor_s"]),
                 f"{s['scrape_s'] / s['floor_s']:.2f}x", _ms(docker)]
        print("".join(f"{c:>13}" for c in cells))
    print()
    for low, high, cost in _per_container(scrapes, "scrape_s"):
        print(f"cost per container, {low} -> {high}: {cost * 1e6:.0f} us "
              "(scrape)")
    for low, high, cost in _per_container(scrapes, "floor_s"):
        print(f"cost per container, {low} -> {high}: {cost * 1e6:.0f} us (floor)")
    print()
    print("event loop during the scrapes (GET /_ping back to back; corrald's "
          "100 ms wake-ups):")
    for s in scrapes:
        print(f"  {s['containers']:>4}: ping max {_ms(s['ping_during_max_s'])} "
              f"(idle {_ms(s['ping_idle_max_s'])}), median "
              f"{_ms(s['ping_during_median_s'])} (idle "
              f"{_ms(s['ping_idle_median_s'])}); wake-ups later than 5 ms: "
              f"{s['wakeups_late_5ms']:.0f}/{s['wakeups']:.0f}, later than 25 ms: "
              f"{s['wakeups_late_25ms']:.0f}")
    stats = results["stats"]
    print()
    print(f"stats at {stats['containers']} containers: one container's "
          f"stats?stream=false {_ms(stats['single_s'])} (floor "
          f"{_ms(stats['single_floor_s'])}); GET /stats "
          f"{_ms(stats['batch_s'])} (floor {_ms(stats['batch_floor_s'])})")
    found = targets(scrapes, stats)
    print()
    for t in found:
        print(f"{'PASS' if t['met'] else 'MISS'}  {t['target']}: {t['value']}")
    return found


def targets(scrapes: list[dict], stats: dict) -> list[dict]:
    found = []
    at_100 = next((s for s in scrapes if s["containers"] == 100), None)
    if at_100 is not None:
        found.append(_target("scrape of 100 containers within 100 ms",
                             at_100["scrape_s"] * 1000, 100.0, "ms"))
    steps = _per_container(scrapes, "scrape_s")
    if len(steps) >= 2:
        first, last = steps[0][2], steps[-1][2]
        found.append(_target(
            f"linear: cost per container {steps[-1][0]}->{steps[-1][1]} within "
            f"1.5x of {steps[0][0]}->{steps[0][1]}", last / first, 1.5, "x"))
    found.append(_target("one container's stats call under 2x the floor",
                         stats["single_s"] / stats["single_floor_s"], 2.0, "x"))
    found.append(_target(f"GET /stats of {stats['containers']} under 2x the floor",
                         stats["batch_s"] / stats["batch_floor_s"], 2.0, "x"))
    return found


def _target(text: str, value: float, limit: float, unit: str) -> dict:
    return {"target": text, "value": f"{value:.2f} {unit}",
            "met": value <= limit}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="10,100,500",
                        help="container counts to scrape at (default 10,100,500)")
    parser.add_argument("--scrapes", type=int, default=7,
                        help="scrapes per count (default 7)")
    parser.add_argument("--stats-calls", type=int, default=20,
                        help="stats calls at 50 containers (default 20)")
    parser.add_argument("--docker-max", type=int, default=500,
                        help="run docker stats up to this count (default 500)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="comma-separated; corral is always measured")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.counts = sorted({int(c) for c in args.counts.split(",") if c})
    names = [n for n in args.engines.split(",") if n]
    args.engine_names = ["corral", *[n for n in names if n not in ("corral", "podman")]]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def measure(ctx, engines, skipped, watcher, host):
        results = run_measures(engines, args)
        found = report(engines, skipped, results, args)
        if args.json:
            args.json.write_text(json.dumps(
                {"results": results, "targets": found, "skipped": skipped},
                indent=2, default=str) + "\n")

    return br.run_bench("bench_metrics.py", args.engine_names, measure)


if __name__ == "__main__":
    sys.exit(main())
