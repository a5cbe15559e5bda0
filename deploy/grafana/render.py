#!/usr/bin/env python3
"""Draw the corral dashboard's panels from a real corrald scraped by a real
Prometheus, as one PNG (the picture in the README).

Run as root from the repository, after `make image` and with matplotlib in
the virtualenv (`.venv/bin/pip install '.[docs]'`):

    .venv/bin/python deploy/grafana/render.py --minutes 8 \\
        --out deploy/grafana/corral-dashboard.png

It starts a corrald of its own (state in a temporary directory, socket
there, cgroup parent corral-render-XXXX, metrics on a free loopback port)
and a Prometheus of its own scraping it every 2 s, runs a small workload
for --minutes, then asks Prometheus for every panel of
deploy/grafana/corral-dashboard.json, with the panel's own PromQL, over
that time, and draws them on the dashboard's grid. At the end it stops
both daemons by their pid and removes its cgroups and temporary files.

The workload, all from the sample busybox image:
  busy    a CPU spinner limited to half a core (--cpus 0.5): CPU and CPU
          pressure;
  leaky   writes 1 MiB a second to its /dev/shm (tmpfs: memory that
          cannot be reclaimed) into a 48 MiB limit, is OOM-killed as a
          whole (--oom-kill-group), and comes back after 10 s (--restart
          on-failure);
  crashy  exits 1 after 40 s, restarted by --restart always;
  flaky   a health check that fails in odd minutes (--health-retries 1).

Or draw from a Prometheus you already run, which scrapes corrald as job
"corral": --prometheus http://127.0.0.1:9090 --minutes 30 (no workload).
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "corral-dashboard.json"
BIN = Path(sys.executable).parent
CGROUP_ROOT = Path("/sys/fs/cgroup")
SCRAPE_S = 2

WORKLOAD = {
    "busy": ["--cpus", "0.5", "busybox:test", "sh", "-c", "while :; do :; done"],
    "leaky": ["-m", "48m", "--memory-swap", "48m", "--oom-kill-group",
              "--restart", "on-failure",
              "--restart-delay", "10s", "busybox:test", "sh", "-c",
              "i=0; while :; do dd if=/dev/zero of=/dev/shm/$i bs=1M count=1 "
              "2>/dev/null; i=$((i+1)); sleep 1; done"],
    "crashy": ["--restart", "always", "--restart-delay", "2s", "busybox:test",
               "sh", "-c", "sleep 40; exit 1"],
    "flaky": ["--health-cmd", "test $(( $(date +%s) / 60 % 2 )) -eq 0",
              "--health-interval", "5s", "--health-retries", "1",
              "busybox:test", "sleep", "infinity"],
}


class RenderError(Exception):
    pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8,
                        help="how long to run the workload, or how far back to draw")
    parser.add_argument("--out", type=Path, default=REPO / "deploy" / "grafana"
                        / "corral-dashboard.png")
    parser.add_argument("--prometheus", metavar="URL",
                        help="draw from this Prometheus instead of starting one")
    parser.add_argument("--image-tar", type=Path,
                        default=REPO / "build" / "busybox-docker.tar")
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("render.py: needs matplotlib: .venv/bin/pip install '.[docs]'",
              file=sys.stderr)
        return 2
    try:
        if args.prometheus:
            end = time.time()
            draw(args.prometheus, end - args.minutes * 60, end, args.out)
        else:
            with Stack(args.image_tar) as stack:
                start = time.time()
                stack.run_workload()
                print(f"workload running; drawing in {args.minutes:g} min", flush=True)
                time.sleep(args.minutes * 60)
                draw(stack.prometheus_url, start, time.time(), args.out)
    except RenderError as err:
        print(f"render.py: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


# ---- the daemons -------------------------------------------------------------------


class Stack:
    """A corrald and a Prometheus of this script's own, ended by their pid."""

    def __init__(self, image_tar: Path):
        if os.geteuid() != 0:
            raise RenderError("run as root: corrald needs it")
        if not image_tar.is_file():
            raise RenderError(f"{image_tar} is missing: run `make image` first")
        if not shutil.which("prometheus"):
            raise RenderError("prometheus is not installed: apt-get install prometheus")
        self.image_tar = image_tar
        self.top = Path(tempfile.mkdtemp(prefix="corral-render-"))
        self.cgroup_parent = f"corral-render-{secrets.token_hex(4)}"
        self.socket = self.top / "corral.sock"
        self.metrics_port = free_port()
        self.prometheus_url = f"http://127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self._spawn("corrald", [str(BIN / "corrald"), "--root", str(self.top / "state"),
                                "--socket", str(self.socket),
                                "--cgroup-parent", self.cgroup_parent,
                                "--metrics-addr", f"127.0.0.1:{self.metrics_port}"])
        wait_for(lambda: get(f"http://127.0.0.1:{self.metrics_port}/metrics"), 20,
                 "corrald's metrics endpoint")
        config = self.top / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\n"
            "scrape_configs:\n  - job_name: corral\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{self.metrics_port}']\n"
        )
        self._spawn("prometheus", [
            "prometheus", f"--config.file={config}",
            f"--storage.tsdb.path={self.top / 'prometheus'}",
            f"--web.listen-address={self.prometheus_url.removeprefix('http://')}"])
        wait_for(lambda: get(f"{self.prometheus_url}/-/ready"), 30, "Prometheus")
        self.corral("load", "-i", str(self.image_tar))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.top / f"{name}.log", "wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=log,
                                           stdin=subprocess.DEVNULL))
        log.close()

    def corral(self, *argv: str) -> str:
        done = subprocess.run([str(BIN / "corral"), "-H", f"unix://{self.socket}", *argv],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RenderError(f"corral {' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def run_workload(self) -> None:
        for name, argv in WORKLOAD.items():
            self.corral("run", "-d", "--name", name, *argv)

    def __exit__(self, *exc) -> None:
        # corrald stops its containers on SIGTERM; Prometheus just ends.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        remove_cgroup_parent(self.cgroup_parent)
        shutil.rmtree(self.top, ignore_errors=True)


def remove_cgroup_parent(parent: str) -> None:
    """rmdir the (empty, once corrald has stopped) cgroups under our parent."""
    for top in [*CGROUP_ROOT.glob(f"*/{parent}"), CGROUP_ROOT / parent]:
        if not top.is_dir():
            continue
        for child in sorted(top.rglob("*"), reverse=True):
            if child.is_dir():
                child.rmdir()
        top.rmdir()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.read()
    except (urllib.error.URLError, OSError):
        return None


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RenderError(f"{what} did not answer within {timeout_s:g} s")


# ---- drawing -----------------------------------------------------------------------


def query_range(base: str, promql: str, start: float, end: float, step: float) -> list:
    params = urllib.parse.urlencode(
        {"query": promql, "start": start, "end": end, "step": step})
    body = get(f"{base}/api/v1/query_range?{params}")
    if body is None:
        raise RenderError(f"Prometheus at {base} did not answer the query {promql!r}")
    doc = json.loads(body)
    if doc.get("status") != "success":
        raise RenderError(f"Prometheus refused {promql!r}: {doc.get('error')}")
    return doc["data"]["result"]


def legend(template: str, labels: dict) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def draw(base: str, start: float, end: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from datetime import datetime

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p.get("targets")]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(16, rows * 0.5), dpi=100)
    fig.suptitle(f"{dashboard['title']}: {(end - start) / 60:.0f} min of a real corrald, "
                 "drawn from Prometheus with the dashboard's queries", fontsize=12, y=0.995)
    grid = fig.add_gridspec(rows, 24, hspace=2.6, wspace=1.2, top=0.96)
    step = max(SCRAPE_S, round((end - start) / 300))
    for panel in panels:
        pos = panel["gridPos"]
        ax = fig.add_subplot(grid[pos["y"]:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
        ax.set_title(panel["title"], fontsize=10, loc="left")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        series = []
        for target in panel["targets"]:
            promql = target["expr"].replace("$name", ".*")
            for result in query_range(base, promql, start, end, step):
                points = [(float(t), float(v)) for t, v in result["values"]]
                series.append((legend(target.get("legendFormat", ""), result["metric"]),
                               points))
        if panel["type"] == "stat":
            last = series[0][1][-1][1] if series else float("nan")
            ax.text(0.5, 0.45, f"{last:g}", fontsize=40, ha="center", va="center",
                    transform=ax.transAxes, color="#2f7d32")
            ax.set_axis_off()
            continue
        if len(series) > 8:
            # A crowded panel (pressure: six series per container) keeps
            # the series that rose above 1 % of the panel's highest value.
            top = max((v for _, points in series for _, v in points), default=0)
            series = [s for s in series if max(v for _, v in s[1]) > top / 100]
        scale, label = {"bytes": (1 / (1 << 20), "MiB"),
                        "percentunit": (100, "%")}.get(unit, (1, ""))
        for name, points in sorted(series):
            times = [datetime.fromtimestamp(t) for t, _ in points]
            style = "--" if name.endswith(" limit") else "-"
            ax.plot(times, [v * scale for _, v in points], style, linewidth=1.2,
                    label=name)
        if label:
            ax.set_ylabel(label, fontsize=8)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7, loc="upper left", ncol=2 if len(series) > 4 else 1)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())
