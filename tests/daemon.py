"""Start a real corrald for tests: its own state dir, socket and cgroup parent,
so it never meets a corrald the host runs."""

import contextlib
import http.client
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from supervisor.client import Client, ClientError, read_frames

BIN_DIR = Path(sys.executable).parent


class _UnixConnection(http.client.HTTPConnection):
    """The standard library's HTTP client over a unix socket: an independent
    client for raw requests, so tests do not judge corral's API with corral's
    own client."""

    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock
CGROUP_ROOT = Path("/sys/fs/cgroup")


class Daemon:
    def __init__(self, root: Path, cgroup_parent: str | None = None,
                 default_metrics_addr: bool = False):
        # Test daemons leave 127.0.0.1:9323 to the machine's own corrald,
        # unless a test asks for the default or sets CORRAL_METRICS_ADDR.
        self.default_metrics_addr = default_metrics_addr
        self.root = root
        self.socket = root / "corral.sock"
        self.cgroup_parent = cgroup_parent or f"corral-test-{secrets.token_hex(4)}"
        self.log_path = root / "corrald.log"
        self.proc: subprocess.Popen | None = None
        self.client = Client(f"unix://{self.socket}")

    def start(self, timeout_s: float = 15) -> None:
        env = dict(os.environ)
        if not self.default_metrics_addr:
            env.setdefault("CORRAL_METRICS_ADDR", "none")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN_DIR / "corrald"), "--root", str(self.root / "state"),
                 "--socket", str(self.socket), "--cgroup-parent", self.cgroup_parent,
                 "--log-level", "debug"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corrald exited early:\n{self.log_path.read_text()}")
            try:
                self.client.open("GET", "/_ping").read()
                return
            except ClientError:
                time.sleep(0.05)
        raise RuntimeError(f"corrald did not answer:\n{self.log_path.read_text()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def stop(self, timeout_s: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def crash(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> None:
        assert self.stop() == 0, self.log_path.read_text()
        self.start()

    def cli(self, *args, check=False, timeout=60, input=None) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(BIN_DIR / "corral"), "-H", f"unix://{self.socket}", *args],
            capture_output=True, text=True, timeout=timeout, input=input, check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"corral {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def cli_popen(self, *args) -> subprocess.Popen:
        """A `corral` command left running, for follow and wait tests."""
        return subprocess.Popen(
            [str(BIN_DIR / "corral"), "-H", f"unix://{self.socket}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def api(self, method, path, body=None, **query):
        return self.client.call(method, path, query or None, body)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, timeout_s: float = 30) -> "Reply":
        """One raw request; any status is returned, never raised."""
        conn = _UnixConnection(str(self.socket), timeout_s)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def run_detached(self, *args) -> str:
        """`corral run -d ARGS`; the new container's id."""
        return self.cli("run", "-d", *args, check=True).stdout.strip()

    def remove_all(self) -> None:
        for container in self.api("GET", "/containers/json", all=1):
            self.api("DELETE", f"/containers/{container['Id']}", force=1)

    def snapshot(self) -> "Snapshot":
        """What exists now: container ids, state dirs and container cgroups."""
        ids = {c["Id"] for c in self.api("GET", "/containers/json", all=1)}
        dirs = set(os.listdir(self.state_dir / "containers"))
        return Snapshot(ids, dirs, set(self.container_cgroups()))

    def container_cgroups(self) -> list[Path]:
        """Every container cgroup under this daemon's parent, in every tree."""
        found = []
        for parent in self.cgroup_parent_dirs():
            found += [p for p in parent.iterdir() if p.is_dir()]
        return found

    def cgroup_parent_dirs(self) -> list[Path]:
        parents = list(CGROUP_ROOT.glob(f"*/{self.cgroup_parent}"))
        if (CGROUP_ROOT / self.cgroup_parent).is_dir():
            parents.append(CGROUP_ROOT / self.cgroup_parent)
        return parents

    def inspect(self, ref: str) -> dict:
        return self.api("GET", f"/containers/{ref}/json")

    def events(self, since_ns: int, until_ns: int | None = None, **filters) -> list[dict]:
        """GET /events from since_ns to until_ns (default: now), oldest first;
        filters as the API takes them, e.g. container=[name]."""
        query = {"since": unix_stamp(since_ns),
                 "until": unix_stamp(until_ns or time.time_ns())}
        if filters:
            query["filters"] = json.dumps(filters)
        return events_json(self.client.open("GET", "/events", query).read().decode())

    def load(self, tarball: Path) -> str:
        with open(tarball, "rb") as f:
            response = self.client.open("POST", "/images/load", body=f,
                                        headers={"Content-Length": str(tarball.stat().st_size)})
            return response.read().decode()

    def cleanup_cgroups(self) -> None:
        """Remove the test's cgroup parents (only those this test run created)."""
        for parent in CGROUP_ROOT.glob(f"*/{self.cgroup_parent}"):
            for child in sorted(parent.rglob("*"), reverse=True):
                if child.is_dir():
                    os.rmdir(child)
            os.rmdir(parent)
        v2 = CGROUP_ROOT / self.cgroup_parent
        if v2.is_dir():
            os.rmdir(v2)


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Snapshot:
    ids: set[str]
    dirs: set[str]
    cgroups: set[Path]


def wait_until(condition, timeout_s: float = 10, interval_s: float = 0.05,
               message: str = "condition"):
    """Poll condition() until it returns something true; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} did not hold within {timeout_s} s")
        time.sleep(interval_s)


def holds_for(condition, duration_s: float, interval_s: float = 0.1,
              message: str = "condition") -> None:
    """Poll condition() for duration_s; fail as soon as it is false."""
    deadline = time.monotonic() + duration_s
    while True:
        value = condition()
        assert value, f"{message} stopped holding ({value!r})"
        if time.monotonic() > deadline:
            return
        time.sleep(interval_s)


def unix_stamp(ns: int) -> str:
    """Docker's "seconds.nanoseconds" form of a time in ns."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


@contextlib.contextmanager
def open_daemon(busybox_archive: Path | None = None):
    """A started corrald in a fresh short /tmp root (unix socket paths are
    limited to 107 bytes), with busybox:test loaded when an archive is given.
    On exit every container is removed, the daemon gets SIGTERM and must exit
    0, and its cgroup parents and root are removed."""
    root = Path(tempfile.mkdtemp(prefix="corral-it-"))
    daemon = Daemon(root)
    try:
        daemon.start()
        if busybox_archive is not None:
            loaded = daemon.load(busybox_archive)
            assert "Loaded image: busybox:test" in loaded, loaded
        yield daemon
        shut_down(daemon)
    finally:
        if daemon.running:
            daemon.crash()
        daemon.cleanup_cgroups()
        shutil.rmtree(root, ignore_errors=True)


def shut_down(daemon: Daemon) -> None:
    """Remove every container and stop the daemon; it must exit 0."""
    if daemon.proc is None:
        return
    if not daemon.running:
        # A test crashed it: a new start settles what the old one left.
        daemon.start()
    daemon.remove_all()
    code = daemon.stop()
    assert code == 0, f"corrald exited {code}:\n{daemon.log_path.read_text()[-4000:]}"
    assert daemon.container_cgroups() == []


def attach_daemon_logs(item, report) -> None:
    """Add the tail of every corrald log a failed test used to its report;
    the log is gone once the fixture removes the daemon's root."""
    if report.when == "setup" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Daemon) and value.log_path.exists():
            tail = value.log_path.read_text(errors="replace")[-6000:]
            report.sections.append((f"corrald log ({value.root})", tail))


def line_queue(process: subprocess.Popen) -> "queue.Queue[str]":
    """The lines of a process's stdout, as they come, to get with a timeout."""
    lines: queue.Queue[str] = queue.Queue()

    def pump():
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def unique_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def frames(response) -> list[tuple[int, bytes]]:
    """(stream, data) of every frame of a multiplexed log or attach reply."""
    return list(read_frames(response))


def events_json(lines: str) -> list[dict]:
    return [json.loads(line) for line in lines.splitlines() if line.strip()]
