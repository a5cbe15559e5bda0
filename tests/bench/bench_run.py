#!/usr/bin/env python3
"""Container start-up benchmark: corral against Docker, Podman and bare runc.

Run as root from the repository (make bench runs the first form):

    .venv/bin/python tests/bench/bench_run.py
    .venv/bin/python tests/bench/bench_run.py --runs 20 --engines corral,docker \\
        --concurrent 50 --parallel 8 --json /tmp/bench.json

It prints figures, and ratios against the peers measured in the same run. It
asserts nothing about timings: it exits 0 whether corral meets its targets or
not, and 1 only when the bench itself broke.

What is measured, the same way for every engine
------------------------------------------------
1. `run --rm IMAGE true`: wall time of the CLI process, from just before it is
   forked to its exit.
2. `run -d IMAGE sh -c 'echo up; exec sleep 60'` until PID 1 runs: from just
   before the CLI is forked to the moment the container's PID 1 execs the
   container's command (`sh`). The moment is the kernel's CLOCK_MONOTONIC
   stamp on the exec event from the process connector (netlink), so neither a
   polling interval nor the speed of an engine's `logs` or `inspect` blurs it.
   The container's PID 1 is recognised as the process that later execs
   `sleep 60` while being pid 1 of its own pid namespace (NSpid in
   /proc/PID/status); its `sh` is the exec just before that one. Whatever ran
   in that process before (a forked helper, `runc init`) does not count. The
   CLI's own wall time is reported as well.
3. N concurrent `run -d IMAGE sleep 3600`, P at a time (like `xargs -P P`):
   N / (time from the first launch to the last CLI exit), in containers/s,
   median of --rounds rounds. The containers are removed after each round,
   untimed.
4. Supervisor memory, from /proc/PID/smaps_rollup: corrald's RSS and PSS with
   no container and with the N containers of measure 3 running, and the PSS
   delta per container. For Docker, the PSS of the containerd-shim processes
   plus the dockerd+containerd delta, per container; for Podman, the PSS of
   the conmon processes per container. Bare runtimes supervise nothing.
   The per-container figure is the largest over the rounds (later rounds
   reuse memory a daemon kept from earlier ones). PSS shares a page among
   all processes mapping it, so other Python processes coming and going on
   the host move corrald's PSS by a few hundred KiB: a small error next to
   a target per container times N.

Measures 1 and 2 run round-robin: every iteration runs each engine once, in an
order that rotates from one iteration to the next, so drift on a noisy machine
hits every engine alike. One untimed warm-up per engine and measure comes
first, and --settle seconds pass between samples so one engine's background
clean-up does not land on the next engine's sample. p90 is the nearest-rank
90th percentile.

Engines
-------
corral  always measured. Its own corrald (temporary --root, --socket and
        --cgroup-parent), unless CORRAL_HOST names a running one.
docker  when dockerd is installed: its own dockerd with its own data root, exec
        root, pid file, socket and cgroup parent, --iptables=false
        --ip-forward=false --ip-masq=false --bridge=none (no host networking
        touched); containers run with --network none.
podman  when installed: --runtime runc (crun 1.8 refuses hybrid cgroups),
        temporary --root, --runroot, --tmpdir and network config dir, cgroupfs
        with its own cgroup parent, --network none and the explicit --ulimit
        values this host needs (it lacks CAP_SYS_RESOURCE).
runc    the floor: `runc run` of an OCI bundle unpacked from the same image,
        read-only shared rootfs, own state root and cgroup parent.
crun    the same, when it accepts the host's cgroup layout (probed once).

Every engine loads the same busybox:test archive: $CORRAL_SAMPLE_DIR/
busybox-docker.tar (and busybox-oci.tar for the bare runtimes) when present,
otherwise tests/images/build-sample.sh builds them into a temporary directory.

Side effects and clean-up
-------------------------
Everything lives under one temporary directory. At the end (also on error or
Ctrl-C) the bench removes its containers, stops the daemons it started by pid,
ends leftover processes it started (found by the temporary directory in their
command line, or in its own cgroups) by pid, unmounts what is mounted under its
temporary directory, removes its cgroups and the directory. dockerd, runc and
podman create a few host paths of their own (/etc/docker/key.json, /run/docker,
/run/containerd, /run/runc); those that did not exist before are removed again
when they hold nothing but empty directories. The bench makes itself a child
subreaper so that processes the engines orphan (shims, conmon, detached
containers) are reaped here instead of piling up as zombies.
"""

import argparse
import compileall
import ctypes
import errno
import json
import math
import os
import platform
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE = "busybox:test"
SLEEP_COMMAND = ["sh", "-c", "echo up; exec sleep 60"]
SLEEP_CMDLINE = b"sleep\x0060\x00"
SH_CMDLINE_PREFIX = b"sh\x00-c\x00echo up"
CONCURRENT_COMMAND = ["sleep", "3600"]
CLI_TIMEOUT_S = 120
PID1_TIMEOUT_S = 30
DAEMON_START_TIMEOUT_S = 60
DAEMON_STOP_TIMEOUT_S = 60
MIB = 1024 * 1024

TARGET_RUN_RM_RATIO = 0.5
TARGET_RATE_PER_S = 30.0
TARGET_PSS_PER_CONTAINER_MIB = 0.4

# Paths the peers create outside their own roots, whatever flags they get.
HOST_PATHS = {
    "docker": ["/etc/docker/key.json", "/run/docker", "/run/containerd"],
    "podman": ["/run/runc", "/etc/cni/net.d/cni.lock"],
}

PR_SET_CHILD_SUBREAPER = 36
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


class BenchError(Exception):
    """The bench itself broke: an engine failed, or a figure could not be taken."""


class Unavailable(Exception):
    """An engine cannot be measured on this host; the message says why."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- statistics ----------------------------------------------------------------


def median(values):
    return statistics.median(values) if values else None


def p90(values):
    """Nearest-rank 90th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


# ---- processes -----------------------------------------------------------------


@dataclass
class Proc:
    pid: int
    ppid: int
    state: str
    comm: str
    cmdline: bytes


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def processes():
    """Every process on the host, skipping those that vanish mid-read."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = read_bytes(f"/proc/{entry.name}/stat")
        if not stat:
            continue
        close = stat.rindex(b")")
        fields = stat[close + 2 :].split()
        comm = stat[stat.index(b"(") + 1 : close].decode(errors="replace")
        cmdline = read_bytes(f"/proc/{entry.name}/cmdline")
        yield Proc(int(entry.name), int(fields[1]), fields[0].decode(), comm, cmdline)


def memory_of(pids) -> dict:
    """Summed RSS and PSS in bytes, from smaps_rollup, of the given pids."""
    total = {"rss": 0, "pss": 0, "count": 0}
    for pid in pids:
        text = read_bytes(f"/proc/{pid}/smaps_rollup").decode()
        found = dict(re.findall(r"^(Rss|Pss):\s+(\d+) kB", text, re.MULTILINE))
        if "Pss" not in found:
            continue
        total["rss"] += int(found["Rss"]) * 1024
        total["pss"] += int(found["Pss"]) * 1024
        total["count"] += 1
    return total


def become_subreaper() -> None:
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError(
            f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}"
        )


def reap_orphans(keep: set[int]) -> None:
    """Reap zombies the engines orphaned to us; call only between samples.

    Between samples every child the bench started itself has been waited
    for, except the daemons in keep, so any other zombie child is an orphan.
    """
    me = os.getpid()
    for proc in processes():
        if proc.ppid == me and proc.state == "Z" and proc.pid not in keep:
            try:
                os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                pass


def end_processes(pids: set[int], timeout_s: float = 5) -> None:
    """SIGTERM, then SIGKILL after timeout_s, the given pids (ours only)."""
    pids = set(pids) - {os.getpid()}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if _alive(pid)}
        time.sleep(0.1)
    for pid in pids:
        log(f"  process {pid} ignored SIGTERM; sending SIGKILL")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    stat = read_bytes(f"/proc/{pid}/stat")
    if not stat:
        return False
    state = stat[stat.rindex(b")") + 2 :].split()[0]
    if state == b"Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


# ---- command-line calls --------------------------------------------------------


@dataclass
class CliResult:
    started_ns: int
    wall_ns: int
    stdout: str
    container_id: str = ""


def run_timed(argv: list[str], env: dict | None = None) -> CliResult:
    """Run one CLI call to its exit; its output goes to files, not pipes.

    Pipes would tie the CLI's exit to the container for runtimes that hand
    their stdio to the container (runc run -d).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic_ns()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env
        )
        try:
            code = wait_exit(proc, CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BenchError(f"{shlex.join(argv)} did not finish in {CLI_TIMEOUT_S} s")
        wall = time.monotonic_ns() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode()
    if code != 0:
        raise BenchError(f"{shlex.join(argv)} exited {code}: {stderr.strip()}")
    return CliResult(started, wall, stdout)


def wait_exit(proc: subprocess.Popen, timeout_s: float) -> int:
    """Popen.wait(timeout) polls with sleeps of up to 50 ms, which would
    round every timing up to that grain; a pidfd wakes the moment it exits."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout_s)
    finally:
        os.close(pidfd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout_s)
    return proc.wait()


def run_quiet(argv: list[str], env: dict | None = None, check=True) -> str:
    result = subprocess.run(
        argv,
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=CLI_TIMEOUT_S * 2,
    )
    if check and result.returncode != 0:
        raise BenchError(
            f"{shlex.join(argv)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result.stdout


def wait_for_ping(socket_path: Path, proc: subprocess.Popen, log_path: Path) -> None:
    """Wait until a Docker-shaped API answers GET /_ping on socket_path."""
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{proc.args[0]} exited {proc.returncode} at start; its log "
                f"({log_path}) ends:\n{_tail(log_path)}"
            )
        if _ping(socket_path):
            return
        time.sleep(0.05)
    raise BenchError(
        f"{proc.args[0]} did not answer on {socket_path} within "
        f"{DAEMON_START_TIMEOUT_S} s; its log ends:\n{_tail(log_path)}"
    )


def _ping(socket_path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: bench\r\n\r\n")
            return sock.recv(64).split(b" ")[1:2] == [b"200"]
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_daemon(proc: subprocess.Popen, name: str) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(DAEMON_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(
            f"  {name} (pid {proc.pid}) did not stop within "
            f"{DAEMON_STOP_TIMEOUT_S} s of SIGTERM; sending SIGKILL"
        )
        proc.kill()
        proc.wait()


# ---- exec events ---------------------------------------------------------------

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_EXEC = 0x2
NLMSG_DONE = 3
SO_RCVBUFFORCE = 33
# nlmsghdr (16 bytes), then cn_msg (20), then proc_event: what, cpu,
# timestamp_ns, then for an exec event the pid and tgid.
_EVENT_OFFSET = 16 + 20
_EXEC_PID_OFFSET = _EVENT_OFFSET + 16


@dataclass
class ExecEvent:
    time_ns: int  # CLOCK_MONOTONIC, as time.monotonic_ns()
    pid: int
    cmdline: bytes  # as read when the event arrived: may be a later exec's
    cgroup: bytes  # /proc/PID/cgroup, read only for a container's `sleep 60`


class ExecWatcher:
    """Exec events from the kernel's process connector (root only).

    Each event carries the kernel's CLOCK_MONOTONIC time of the execve(), so a
    start-up time is exact however late this thread gets to read it. The
    command line is read when the event arrives, so it may already be that
    of a later exec of the same process; pid1_exec_ns copes with that.
    Events are only kept while armed.
    """

    def __init__(self):
        try:
            self._sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR
            )
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 * MIB)
            self._sock.bind((0, CN_IDX_PROC))
            self._send_op(PROC_CN_MCAST_LISTEN)
        except OSError as err:
            raise BenchError(
                f"cannot listen to exec events on the kernel's process connector "
                f"({err.strerror}); the bench needs root and CONFIG_PROC_EVENTS"
            ) from err
        self._sock.settimeout(0.5)
        self._lock = threading.Lock()
        self._events: list[ExecEvent] = []
        self._armed = False
        self._closed = False
        self.overflowed = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _send_op(self, op: int) -> None:
        payload = struct.pack("=I", op)
        cn_msg = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0)
        body = cn_msg + payload
        port = self._sock.getsockname()[0]
        header = struct.pack("=IHHII", 16 + len(body), NLMSG_DONE, 0, 0, port)
        self._sock.send(header + body)

    def arm(self) -> None:
        with self._lock:
            self._events = []
            self.overflowed = False
            self._armed = True

    def events(self) -> list[ExecEvent]:
        with self._lock:
            return list(self._events)

    def disarm(self) -> list[ExecEvent]:
        with self._lock:
            self._armed = False
            return self._events

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        try:
            self._send_op(PROC_CN_MCAST_IGNORE)
        except OSError:
            pass
        self._sock.close()

    def _loop(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    self.overflowed = True
                    continue
                return
            if self._armed:
                self._parse(data)

    def _parse(self, data: bytes) -> None:
        offset = 0
        while offset + _EXEC_PID_OFFSET + 8 <= len(data):
            (length,) = struct.unpack_from("=I", data, offset)
            what, _cpu, stamp = struct.unpack_from("=IIQ", data, offset + _EVENT_OFFSET)
            if what == PROC_EVENT_EXEC:
                (pid,) = struct.unpack_from("=I", data, offset + _EXEC_PID_OFFSET)
                self._record(stamp, pid)
            if length < 16:
                break
            offset += (length + 3) & ~3

    def _record(self, stamp: int, pid: int) -> None:
        cmdline = read_bytes(f"/proc/{pid}/cmdline")
        cgroup = b""
        if cmdline == SLEEP_CMDLINE and _is_namespace_init(pid):
            cgroup = read_bytes(f"/proc/{pid}/cgroup")
        with self._lock:
            if self._armed:
                self._events.append(ExecEvent(stamp, pid, cmdline, cgroup))


def _is_namespace_init(pid: int) -> bool:
    """True if pid is pid 1 of its own pid namespace (NSpid ends in 1)."""
    status = read_bytes(f"/proc/{pid}/status").decode(errors="replace")
    nspid = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
    return bool(nspid) and nspid.group(1).split()[1:][-1:] == ["1"]


def container_pid1(events: list[ExecEvent], mark: str) -> int | None:
    """The pid of the container PID 1 that runs `sleep 60` in a cgroup
    whose path holds mark (the engine's own cgroup parent, or the id)."""
    pids = {e.pid for e in events if e.cgroup and f"/{mark}".encode() in e.cgroup}
    if len(pids) > 1:
        raise BenchError(f"saw {len(pids)} PID 1s running `sleep 60` under {mark}")
    return pids.pop() if pids else None


def pid1_exec_ns(events: list[ExecEvent], pid: int) -> int:
    """When PID 1 exec'd `sh`: its exec just before the one of `sleep 60`."""
    execs = sorted((e for e in events if e.pid == pid), key=lambda e: e.time_ns)
    if len(execs) < 2:
        raise BenchError(f"saw the `sleep` exec of PID 1 (pid {pid}) but not its `sh`")
    shell = execs[-2]
    # Read right at the event, the new command line can still be empty; read
    # late, it is already that of `sleep`. Anything else means a missed exec.
    if shell.cmdline and not (
        shell.cmdline.startswith(SH_CMDLINE_PREFIX) or shell.cmdline == SLEEP_CMDLINE
    ):
        seen = ", ".join(repr(e.cmdline[:40]) for e in execs)
        raise BenchError(
            f"the exec before `sleep 60` in pid {pid} was {shell.cmdline!r}, not "
            f"`sh`; the execs of that pid, as read: {seen}"
        )
    return shell.time_ns


# ---- host state: cgroups, mounts, paths --------------------------------------------


def cgroup_mounts() -> list[Path]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in ("cgroup", "cgroup2"):
            points.append(Path(_unescape(left.split()[4])))
    return points


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def cgroup_pids(parent: str) -> set[int]:
    """Pids in any cgroup under the bench's own parent (a unique name)."""
    pids = set()
    for mount in cgroup_mounts():
        top = mount / parent
        if top.is_dir():
            for procs in top.rglob("cgroup.procs"):
                pids |= {int(p) for p in read_bytes(str(procs)).split()}
    return pids


def remove_cgroups(parent: str) -> None:
    """rmdir the bench's own cgroup parent and what is under it, deepest first."""
    for mount in cgroup_mounts():
        top = mount / parent
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), reverse=True):
            try:
                os.rmdir(dirpath)
            except OSError as err:
                log(f"  cannot remove cgroup {dirpath}: {err.strerror}")


def unmount_under(top: Path) -> None:
    """Unmount (lazily) every mount at or under top, deepest first."""
    for _ in range(5):
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = _unescape(line.split()[4])
            if point == str(top) or point.startswith(f"{top}/"):
                points.append(point)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            if _libc.umount2(point.encode(), MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.ENOENT):
                    log(f"  cannot unmount {point}: {os.strerror(err)}")


class HostPaths:
    """Host paths an engine creates outside its roots; remove the new ones."""

    def __init__(self):
        self._new: list[Path] = []

    def note(self, paths: list[str]) -> None:
        self._new += [Path(p) for p in paths if not os.path.lexists(p)]

    def remove_created(self) -> None:
        for path in self._new:
            if path.is_dir() and not path.is_symlink():
                self._remove_empty_tree(path)
            elif path.exists():
                path.unlink()
                log(f"  removed {path} (created by a peer during the bench)")

    def _remove_empty_tree(self, path: Path) -> None:
        for dirpath, dirs, files in sorted(os.walk(path), reverse=True):
            if files or any(Path(dirpath, d).exists() for d in dirs):
                log(f"  left {path}: not empty ({dirpath})")
                return
            os.rmdir(dirpath)
        log(f"  removed {path} (created empty by a peer during the bench)")


# ---- engines -------------------------------------------------------------------


@dataclass
class Context:
    top: Path  # the bench's temporary directory
    docker_archive: Path
    oci_archive: Path | None
    host_paths: HostPaths
    daemons: set[int] = field(default_factory=set)

    def mkdir(self, name: str) -> Path:
        path = self.top / name
        path.mkdir()
        return path


class Engine:
    """One way of running containers, driven through its own CLI."""

    name = ""
    floor = False  # a bare runtime: nothing supervises its containers
    version = ""
    # A cgroup path component only this engine's containers have below them.
    cgroup_mark: str | None = None

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.env = dict(os.environ)
        self.live: set[str] = set()
        self.memory_idle: dict | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def run_rm_argv(self) -> list[str]:
        raise NotImplementedError

    def run_d_argv(self, command: list[str]) -> tuple[list[str], str | None]:
        """argv of a detached run, and the container id when known up front."""
        raise NotImplementedError

    def remove(self, ids: list[str]) -> None:
        raise NotImplementedError

    def memory(self) -> dict | None:
        return None

    def run_d(self, command: list[str]) -> CliResult:
        argv, known_id = self.run_d_argv(command)
        result = run_timed(argv, self.env)
        container_id = known_id or result.stdout.strip().splitlines()[-1]
        self.live.add(container_id)
        result.container_id = container_id
        return result

    def remove_all(self, ids: list[str]) -> None:
        if ids:
            self.remove(ids)
        self.live -= set(ids)


class Corral(Engine):
    name = "corral"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.cli = _corral_cli()
        self.host = os.environ.get("CORRAL_HOST")
        self.proc: subprocess.Popen | None = None
        self.cgroup_parent = f"corral-bench-{secrets.token_hex(4)}"
        self.pid: int | None = None
        self.base: list[str] = []

    def start(self) -> None:
        if self.host:
            self.base = [str(self.cli), "-H", self.host]
            self.pid = socket_owner_pid(self.host.removeprefix("unix://"))
            log(f"  corral: using the corrald at {self.host} (pid {self.pid})")
        else:
            self._start_own()
        run_quiet([*self.base, "load", "-q", "-i", str(self.ctx.docker_archive)])
        found = re.findall(r"Version:\s+(\S+)", run_quiet([*self.base, "version"]))
        self.version = f"corral {found[-1] if found else '?'}"
        self.memory_idle = self.memory()

    def _start_own(self) -> None:
        root = self.ctx.mkdir("corral")
        sock = root / "corral.sock"
        self.host = f"unix://{sock}"
        self.base = [str(self.cli), "-H", self.host]
        self.cgroup_mark = self.cgroup_parent
        self.log_path = root / "corrald.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    str(self.cli.with_name("corrald")),
                    "--root",
                    str(root / "state"),
                    "--socket",
                    str(sock),
                    "--cgroup-parent",
                    self.cgroup_parent,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        self.ctx.daemons.add(self.pid)
        wait_for_ping(sock, self.proc, self.log_path)

    def stop(self) -> None:
        if self.live and self.base:
            run_quiet([*self.base, "rm", "-f", *self.live], check=False)
        if self.proc is None:
            return
        stop_daemon(self.proc, "corrald")
        end_processes(cgroup_pids(self.cgroup_parent))
        remove_cgroups(self.cgroup_parent)

    def run_rm_argv(self) -> list[str]:
        return [*self.base, "run", "--rm", IMAGE, "true"]

    def run_d_argv(self, command):
        return [*self.base, "run", "-d", IMAGE, *command], None

    def remove(self, ids):
        run_quiet([*self.base, "rm", "-f", *ids])

    def memory(self) -> dict | None:
        if self.pid is None:
            return None
        daemon = memory_of([self.pid])
        return {"daemon": daemon, "supervisors": {"rss": 0, "pss": 0, "count": 0}}


def _corral_cli() -> Path:
    for candidate in (
        Path(sys.executable).parent / "corral",
        REPO / ".venv/bin/corral",
    ):
        if candidate.exists():
            return candidate
    found = shutil.which("corral")
    if not found:
        raise BenchError("cannot find the corral CLI; run `make venv` first")
    return Path(found)


def socket_owner_pid(path: str) -> int | None:
    """The pid of the process listening on a unix socket path, if found."""
    inode = None
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[7] == path:
            inode = parts[6]
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) == wanted:
                    return int(entry.name)
        except OSError:
            continue
    return None


class Docker(Engine):
    name = "docker"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        for tool in ("dockerd", "docker"):
            if not shutil.which(tool):
                raise Unavailable(f"{tool} is not installed")
        self.cgroup_parent = f"corral-bench-docker-{secrets.token_hex(4)}"
        self.cgroup_mark = self.cgroup_parent
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        root = self.ctx.mkdir("docker")
        self.root = root
        (root / "daemon.json").write_text("{}\n")
        sock = root / "docker.sock"
        self.env["DOCKER_CONFIG"] = str(root / "cli")
        self.base = ["docker", "-H", f"unix://{sock}"]
        self.ctx.host_paths.note(HOST_PATHS["docker"])
        self.log_path = root / "dockerd.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    "dockerd",
                    "--config-file",
                    str(root / "daemon.json"),
                    "--data-root",
                    str(root / "data"),
                    "--exec-root",
                    str(root / "exec"),
                    "--pidfile",
                    str(root / "dockerd.pid"),
                    "-H",
                    f"unix://{sock}",
                    "--iptables=false",
                    "--ip-forward=false",
                    "--ip-masq=false",
                    "--bridge=none",
                    "--cgroup-parent",
                    f"/{self.cgroup_parent}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.ctx.daemons.add(self.proc.pid)
        wait_for_ping(sock, self.proc, self.log_path)
        run_quiet(
            [*self.base, "load", "-q", "-i", str(self.ctx.docker_archive)], self.env
        )
        server = run_quiet(
            [*self.base, "version", "-f", "{{.Server.Version}}"], self.env
        )
        self.version = f"docker {server.strip()} (containerd, runc)"
        self.memory_idle = self.memory()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Removing hundreds of containers can outlast the CLI timeout;
            # what is left is ended below, by its cgroup.
            try:
                ids = run_quiet([*self.base, "ps", "-aq"], self.env, check=False).split()
                if ids:
                    run_quiet([*self.base, "rm", "-f", *ids], self.env, check=False)
            except subprocess.TimeoutExpired:
                log("  docker rm -f timed out; ending its containers by their cgroup")
        stop_daemon(self.proc, "dockerd")
        end_processes(_mentioning(self.root) | cgroup_pids(self.cgroup_parent))
        unmount_under(self.root)
        remove_cgroups(self.cgroup_parent)

    def run_rm_argv(self):
        return [*self.base, "run", "--rm", "--network", "none", IMAGE, "true"]

    def run_d_argv(self, command):
        return [*self.base, "run", "-d", "--network", "none", IMAGE, *command], None

    def remove(self, ids):
        run_quiet([*self.base, "rm", "-f", *ids], self.env)

    def memory(self) -> dict:
        procs = list(processes())
        dockerd = self.proc.pid
        daemons = [dockerd] + [
            p.pid for p in procs if p.ppid == dockerd and p.comm == "containerd"
        ]
        mark = str(self.root).encode()
        shims = [
            p.pid
            for p in procs
            if p.comm.startswith("containerd-shim") and mark in p.cmdline
        ]
        return {"daemon": memory_of(daemons), "supervisors": memory_of(shims)}


def _mentioning(path: Path) -> set[int]:
    """Processes whose command line names a path under the bench's directory."""
    mark = str(path).encode()
    return {p.pid for p in processes() if mark in p.cmdline and p.pid != os.getpid()}


class Podman(Engine):
    name = "podman"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        if not shutil.which("podman"):
            raise Unavailable("podman is not installed")
        self.cgroup_parent = f"corral-bench-podman-{secrets.token_hex(4)}"
        self.cgroup_mark = self.cgroup_parent
        self.root: Path | None = None

    def start(self) -> None:
        root = self.ctx.mkdir("podman")
        self.root = root
        self.ctx.host_paths.note(HOST_PATHS["podman"])
        self.base = [
            "podman",
            "--runtime",
            "runc",
            "--root",
            str(root / "root"),
            "--runroot",
            str(root / "run"),
            "--tmpdir",
            str(root / "tmp"),
            "--network-config-dir",
            str(root / "net"),
            "--volumepath",
            str(root / "volumes"),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--storage-driver",
            "overlay",
        ]
        self.run_flags = [
            "--network",
            "none",
            "--cgroup-parent",
            f"/{self.cgroup_parent}",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
        ]
        run_quiet([*self.base, "load", "-q", "-i", str(self.ctx.docker_archive)])
        self.version = run_quiet(["podman", "--version"]).strip() + " (conmon, runc)"
        self.memory_idle = self.memory()

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            run_quiet([*self.base, "rm", "-f", "-a", "-t", "0"], check=False)
        except subprocess.TimeoutExpired:
            log("  podman rm -f timed out; ending its containers by their cgroup")
        end_processes(_mentioning(self.root) | cgroup_pids(self.cgroup_parent))
        unmount_under(self.root)
        remove_cgroups(self.cgroup_parent)

    def run_rm_argv(self):
        return [*self.base, "run", "--rm", *self.run_flags, IMAGE, "true"]

    def run_d_argv(self, command):
        return [*self.base, "run", "-d", *self.run_flags, IMAGE, *command], None

    def remove(self, ids):
        run_quiet([*self.base, "rm", "-f", "-t", "0", *ids])

    def memory(self) -> dict:
        mark = str(self.root).encode()
        conmons = [
            p.pid for p in processes() if p.comm == "conmon" and mark in p.cmdline
        ]
        return {
            "daemon": {"rss": 0, "pss": 0, "count": 0},
            "supervisors": memory_of(conmons),
        }


class BareRuntime(Engine):
    """runc or crun on OCI bundles that share one read-only rootfs."""

    floor = True

    def __init__(self, ctx: Context, binary: str):
        super().__init__(ctx)
        self.name = binary
        if not shutil.which(binary):
            raise Unavailable(f"{binary} is not installed")
        if not shutil.which("umoci"):
            raise Unavailable("umoci is not installed (needed to unpack the image)")
        if ctx.oci_archive is None or not ctx.oci_archive.exists():
            raise Unavailable("no busybox-oci.tar next to busybox-docker.tar")
        self.cgroup_parent = f"corral-bench-{binary}-{secrets.token_hex(4)}"
        self.cgroup_mark = self.cgroup_parent
        self.count = 0
        self.root: Path | None = None

    def start(self) -> None:
        root = self.ctx.mkdir(self.name)
        self.root = root
        self.state = root / "state"
        layout = root / "oci"
        layout.mkdir()
        run_quiet(["tar", "-xf", str(self.ctx.oci_archive), "-C", str(layout)])
        run_quiet(["umoci", "unpack", "--image", f"{layout}:test", str(root / "image")])
        self.config = json.loads((root / "image" / "config.json").read_text())
        self.config["process"]["terminal"] = False
        self.config["root"] = {"path": str(root / "image" / "rootfs"), "readonly": True}
        self.version = run_quiet([self.name, "--version"]).splitlines()[0]
        try:
            run_timed(self.run_rm_argv())
        except BenchError as err:
            raise Unavailable(
                f"{self.name} cannot run containers here: {err}"
            ) from None

    def stop(self) -> None:
        if self.root is None:
            return
        for cid in list(self.live):
            run_quiet(self._base("delete", "-f", cid), check=False)
        end_processes(cgroup_pids(self.cgroup_parent))
        remove_cgroups(self.cgroup_parent)

    def _base(self, *args) -> list[str]:
        return [self.name, "--root", str(self.state), *args]

    def _bundle(self, args: list[str]) -> tuple[Path, str]:
        self.count += 1
        cid = f"bench-{self.count}"
        bundle = self.root / "bundles" / cid
        bundle.mkdir(parents=True)
        config = json.loads(json.dumps(self.config))
        config["process"]["args"] = args
        config["hostname"] = cid
        config["linux"]["cgroupsPath"] = f"/{self.cgroup_parent}/{cid}"
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle, cid

    def run_rm_argv(self):
        bundle, cid = self._bundle(["true"])
        return self._base("run", "--bundle", str(bundle), cid)

    def run_d_argv(self, command):
        bundle, cid = self._bundle(command)
        return self._base("run", "-d", "--bundle", str(bundle), cid), cid

    def remove(self, ids):
        for cid in ids:
            run_quiet(self._base("delete", "-f", cid))

    def memory(self) -> dict:
        zero = {"rss": 0, "pss": 0, "count": 0}
        return {"daemon": zero, "supervisors": zero}


ENGINE_TYPES = {
    "corral": Corral,
    "docker": Docker,
    "podman": Podman,
    "runc": lambda ctx: BareRuntime(ctx, "runc"),
    "crun": lambda ctx: BareRuntime(ctx, "crun"),
}
PEERS = ("docker", "podman")


# ---- measures ------------------------------------------------------------------


@dataclass
class Results:
    run_rm_ms: dict = field(default_factory=dict)
    pid1_ms: dict = field(default_factory=dict)
    run_d_cli_ms: dict = field(default_factory=dict)
    rate_per_s: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)


def rotated(engines: list[Engine], iteration: int) -> list[Engine]:
    shift = iteration % len(engines)
    return engines[shift:] + engines[:shift]


def measure_run_rm(engine: Engine) -> float:
    return run_timed(engine.run_rm_argv(), engine.env).wall_ns / 1e6


def measure_pid1(engine: Engine, watcher: ExecWatcher) -> tuple[float, float]:
    """ms from launching `run -d` to PID 1's exec of sh, and the CLI's wall ms."""
    for _attempt in range(3):
        watcher.arm()
        result = engine.run_d(SLEEP_COMMAND)
        pid = wait_for_pid1(engine, watcher, result.container_id)
        time.sleep(0.02)  # the exec event lands just after the new cmdline shows
        events = watcher.disarm()
        engine.remove_all([result.container_id])
        if watcher.overflowed:
            log(f"  {engine.name}: exec events were dropped; sample retaken")
            continue
        try:
            pid1_ns = pid1_exec_ns(events, pid) - result.started_ns
        except BenchError as err:
            raise BenchError(f"{engine.name}: {err}") from None
        return pid1_ns / 1e6, result.wall_ns / 1e6
    raise BenchError("exec events kept being dropped; the host is too busy")


def wait_for_pid1(engine: Engine, watcher: ExecWatcher, container_id: str) -> int:
    mark = engine.cgroup_mark or container_id
    deadline = time.monotonic() + PID1_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = container_pid1(watcher.events(), mark)
        if pid is not None:
            return pid
        time.sleep(0.005)
    raise BenchError(
        f"{engine.name}: container {container_id} was not seen running `sleep 60` "
        f"as its PID 1 within {PID1_TIMEOUT_S} s"
    )


def measure_concurrent(engine: Engine, count: int, parallel: int) -> tuple[float, dict]:
    """containers/s for count `run -d`, parallel at a time; memory while running."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        started = time.monotonic_ns()
        results = list(
            pool.map(lambda _: engine.run_d(CONCURRENT_COMMAND), range(count))
        )
        wall_s = (time.monotonic_ns() - started) / 1e9
    time.sleep(1)  # let the supervisors settle before their memory is read
    loaded = engine.memory()
    engine.remove_all([r.container_id for r in results])
    return count / wall_s, loaded


def settle(ctx: Context, seconds: float) -> None:
    time.sleep(seconds)
    reap_orphans(ctx.daemons)


def run_measures(engines, watcher, ctx, args) -> Results:
    results = Results()
    for engine in engines:
        results.run_rm_ms[engine.name] = []
        results.pid1_ms[engine.name] = []
        results.run_d_cli_ms[engine.name] = []
        results.rate_per_s[engine.name] = []
        results.memory[engine.name] = {
            "idle_after_start": engine.memory_idle,
            "rounds": [],
        }
    log("warm-up: one untimed sample per engine and measure")
    for engine in engines:
        measure_run_rm(engine)
        measure_pid1(engine, watcher)
        settle(ctx, args.settle)
    for i in range(args.runs):
        order = rotated(engines, i)
        for engine in order:
            results.run_rm_ms[engine.name].append(measure_run_rm(engine))
            settle(ctx, args.settle)
        for engine in order:
            pid1, cli = measure_pid1(engine, watcher)
            results.pid1_ms[engine.name].append(pid1)
            results.run_d_cli_ms[engine.name].append(cli)
            settle(ctx, args.settle)
        log(
            f"[{i + 1}/{args.runs}] "
            + "  ".join(
                f"{e.name}: rm {results.run_rm_ms[e.name][-1]:.0f} ms, "
                f"pid1 {results.pid1_ms[e.name][-1]:.0f} ms"
                for e in engines
            )
        )
    for i in range(args.rounds):
        for engine in rotated(engines, i):
            idle = engine.memory()
            rate, loaded = measure_concurrent(engine, args.concurrent, args.parallel)
            results.rate_per_s[engine.name].append(rate)
            results.memory[engine.name]["rounds"].append(
                {"idle": idle, "loaded": loaded}
            )
            log(
                f"[round {i + 1}/{args.rounds}] {engine.name}: {args.concurrent} "
                f"containers at {rate:.1f}/s"
            )
            settle(ctx, max(args.settle, 1.0))
    return results


# ---- report --------------------------------------------------------------------


def per_container(memory: dict, count: int) -> dict | None:
    """Supervisor memory per running container, in MiB: the largest over the
    rounds, since later rounds reuse what a daemon kept from earlier ones."""
    rounds = memory["rounds"]
    if not rounds or rounds[0]["loaded"] is None:
        return None
    out = {}
    for key in ("pss", "rss"):
        totals = [_round_total(r, key) for r in rounds]
        supervisors, daemon = max(totals, key=sum)
        out[f"{key}_supervisors_mib"] = supervisors / count / MIB
        out[f"{key}_daemon_delta_mib"] = daemon / count / MIB
        out[f"{key}_mib"] = (supervisors + daemon) / count / MIB
    return out


def _round_total(round_: dict, key: str) -> tuple[int, int]:
    """Bytes held by per-container processes, and the daemon's growth."""
    loaded, idle = round_["loaded"], round_["idle"]
    return loaded["supervisors"][key], loaded["daemon"][key] - idle["daemon"][key]


def summarize(engines: list[Engine], results: Results, args) -> dict:
    figures = {}
    for engine in engines:
        name = engine.name
        figures[name] = {
            "version": engine.version,
            "run_rm_true_ms": {
                "median": median(results.run_rm_ms[name]),
                "p90": p90(results.run_rm_ms[name]),
            },
            "run_d_until_pid1_ms": {
                "median": median(results.pid1_ms[name]),
                "p90": p90(results.pid1_ms[name]),
            },
            "run_d_cli_exit_ms": {
                "median": median(results.run_d_cli_ms[name]),
                "p90": p90(results.run_d_cli_ms[name]),
            },
            "concurrent_per_s": {
                "median": median(results.rate_per_s[name]),
                "min": min(results.rate_per_s[name], default=None),
            },
            "memory_per_container": None
            if engine.floor
            else per_container(results.memory[name], args.concurrent),
        }
    return figures


def _ratio(corral, peer):
    if corral is None or peer is None or peer == 0:
        return None
    return corral / peer


def best_peer(figures: dict, key: str, sub: str, higher_is_better=False):
    """The better of docker's and podman's figures, and whose it is."""
    values = [(_get(figures[p], key, sub), p) for p in PEERS if p in figures]
    values = [v for v in values if v[0] is not None]
    if not values:
        return None, None
    return (max if higher_is_better else min)(values)


ROWS = [
    # label, figure key, sub key, unit, higher is better
    ("run --rm true, median", "run_rm_true_ms", "median", "ms", False),
    ("run --rm true, p90", "run_rm_true_ms", "p90", "ms", False),
    ("run -d until PID 1 execs, median", "run_d_until_pid1_ms", "median", "ms", False),
    ("run -d until PID 1 execs, p90", "run_d_until_pid1_ms", "p90", "ms", False),
    ("run -d until the CLI exits, median", "run_d_cli_exit_ms", "median", "ms", False),
    ("run -d until the CLI exits, p90", "run_d_cli_exit_ms", "p90", "ms", False),
    ("{n} concurrent run -d, {p} at a time", "concurrent_per_s", "median", "/s", True),
    ("supervisor PSS per container", "memory_per_container", "pss_mib", "MiB", False),
    ("supervisor RSS per container", "memory_per_container", "rss_mib", "MiB", False),
]


def _fmt(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "MiB":
        return f"{value:.2f}"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def print_table(engines: list[Engine], figures: dict, args) -> None:
    names = [e.name for e in engines]
    peers = [p for p in PEERS if p in figures]
    heads = ["measure", "unit", *names, *[f"corral/{p}" for p in peers]]
    if peers:
        heads.append("corral/best")
    rows = [heads]
    for label, key, sub, unit, higher in ROWS:
        label = label.format(n=args.concurrent, p=args.parallel)
        values = [_get(figures[n], key, sub) for n in names]
        corral = _get(figures["corral"], key, sub)
        ratios = [_ratio(corral, _get(figures[p], key, sub)) for p in peers]
        if peers:
            ratios.append(_ratio(corral, best_peer(figures, key, sub, higher)[0]))
        rows.append(
            [
                label,
                unit,
                *[_fmt(v, unit) for v in values],
                *[_fmt(r, "x") for r in ratios],
            ]
        )
    _print_rows(rows)
    print(
        "(ratios: corral's figure over the peer's; below 1 is better for times and "
        "memory, above 1 for containers/s; best = the better of docker and podman)"
    )


def _get(figure: dict, key: str, sub: str):
    value = figure.get(key)
    return value.get(sub) if value else None


def _print_rows(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        print("  ".join(cells))
        if index == 0:
            print("  ".join("-" * w for w in widths))


DAEMON_LABELS = {"corral": "corrald", "docker": "dockerd+containerd"}
SUPERVISOR_LABELS = {"docker": "containerd-shim", "podman": "conmon"}


def print_memory_detail(engines: list[Engine], results: Results, args) -> None:
    """Daemon and per-container supervisor memory, RSS/PSS in MiB."""
    print()
    n = args.concurrent
    rows = [
        ["memory, RSS/PSS MiB", "daemon", "after start", "0 running",
         f"{n} running", "per-container processes", f"{n} running"]
    ]  # fmt: skip
    for engine in engines:
        rounds = results.memory[engine.name]["rounds"]
        if engine.floor or not rounds or rounds[0]["loaded"] is None:
            continue
        rows.append(_memory_row(engine.name, results.memory[engine.name]))
    _print_rows(rows)
    print(
        "(medians over the concurrency rounds; the per-container rows of the first "
        "table are the per-container processes plus the daemon's growth, over "
        f"{n}, in the round where that sum was largest)"
    )


def _memory_row(name: str, memory: dict) -> list[str]:
    rounds = memory["rounds"]
    row = [name]
    if name in DAEMON_LABELS:
        row += [
            DAEMON_LABELS[name],
            _rss_pss([memory["idle_after_start"]["daemon"]]),
            _rss_pss([r["idle"]["daemon"] for r in rounds]),
            _rss_pss([r["loaded"]["daemon"] for r in rounds]),
        ]
    else:
        row += ["none", "-", "-", "-"]
    if name in SUPERVISOR_LABELS:
        supervisors = [r["loaded"]["supervisors"] for r in rounds]
        label = f"{supervisors[-1]['count']} x {SUPERVISOR_LABELS[name]}"
        row += [label, _rss_pss(supervisors)]
    else:
        row += ["none", "-"]
    return row


def _rss_pss(samples: list[dict]) -> str:
    rss = median([s["rss"] for s in samples]) / MIB
    pss = median([s["pss"] for s in samples]) / MIB
    return f"{rss:.1f}/{pss:.1f}"


def targets(figures: dict) -> list[dict]:
    corral = figures["corral"]
    out = []
    best, best_name = best_peer(figures, "run_rm_true_ms", "median")
    mine = corral["run_rm_true_ms"]["median"]
    ratio = _ratio(mine, best)
    out.append(
        {
            "target": f"corral run --rm true <= {TARGET_RUN_RM_RATIO}x the faster of "
            "docker and podman",
            "measured": f"{ratio:.2f}x ({mine:.0f} ms vs {best_name} {best:.0f} ms)"
            if ratio is not None
            else "no peer measured",
            "pass": None if ratio is None else ratio <= TARGET_RUN_RM_RATIO,
        }
    )
    rate = corral["concurrent_per_s"]["median"]
    out.append(
        {
            "target": f"corral concurrent run -d >= {TARGET_RATE_PER_S:.0f} containers/s",
            "measured": f"{rate:.1f}/s",
            "pass": rate >= TARGET_RATE_PER_S,
        }
    )
    memory = corral["memory_per_container"]
    pss = memory["pss_mib"] if memory else None
    out.append(
        {
            "target": f"corral supervisor PSS < {TARGET_PSS_PER_CONTAINER_MIB} MiB per "
            "container",
            "measured": f"{pss:.3f} MiB" if pss is not None else "not measured",
            "pass": None if pss is None else pss < TARGET_PSS_PER_CONTAINER_MIB,
        }
    )
    return out


def print_targets(found: list[dict]) -> None:
    print()
    rows = [["target", "measured", "result"]]
    for t in found:
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[t["pass"]]
        rows.append([t["target"], t["measured"], verdict])
    _print_rows(rows)


# ---- main ----------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Measure container start-up, concurrency and supervisor memory "
        "of corral against docker, podman and bare runc, interleaved in one run."
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=10,
        help="samples per engine for measures 1 and 2 (default 10)",
    )
    parser.add_argument(
        "--engines",
        default="corral,docker,podman,runc,crun",
        help="comma-separated; corral is always measured "
        "(default corral,docker,podman,runc,crun)",
    )
    parser.add_argument(
        "--concurrent",
        type=int,
        default=50,
        help="containers per concurrency round (default 50)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=8,
        help="CLI calls at a time in a round (default 8)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="concurrency rounds per engine, interleaved (default 10)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.2,
        help="seconds between samples (default 0.2)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.concurrent < 1 or args.parallel < 1 or args.rounds < 1:
        parser.error("--runs, --concurrent, --parallel and --rounds must be positive")
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = set(names) - set(ENGINE_TYPES)
    if unknown:
        parser.error(
            f"unknown engine(s) {', '.join(sorted(unknown))}; choose from "
            + ", ".join(ENGINE_TYPES)
        )
    args.engine_names = ["corral"] + [n for n in names if n != "corral"]
    return args


def compile_bytecode() -> None:
    """Write corral's bytecode now: with PYTHONDONTWRITEBYTECODE set (or a
    read-only tree), every CLI call would compile the modules it imports
    again, some 20 ms that no installed corral pays."""
    for package in ("supervisor", "runtime", "metrics"):
        compileall.compile_dir(str(REPO / package), quiet=1)


def sample_archives(top: Path) -> tuple[Path, Path | None]:
    sample_dir = os.environ.get("CORRAL_SAMPLE_DIR")
    if sample_dir and Path(sample_dir, "busybox-docker.tar").exists():
        oci = Path(sample_dir, "busybox-oci.tar")
        return Path(sample_dir, "busybox-docker.tar"), oci if oci.exists() else None
    out = top / "image"
    log(f"building {IMAGE} with tests/images/build-sample.sh")
    run_quiet([str(REPO / "tests/images/build-sample.sh"), str(out)])
    return out / "busybox-docker.tar", out / "busybox-oci.tar"


def start_engines(ctx: Context, names: list[str]) -> tuple[list[Engine], dict]:
    engines, skipped = [], {}
    for name in names:
        try:
            engine = ENGINE_TYPES[name](ctx)
        except Unavailable as err:
            skipped[name] = str(err)
            log(f"  skipped {name}: {err}")
            continue
        log(f"starting {name}")
        engines.append(engine)
        try:
            engine.start()
        except Unavailable as err:
            engines.pop().stop()
            skipped[name] = str(err)
            log(f"  skipped {name}: {err}")
    return engines, skipped


def host_summary() -> str:
    layout = (
        "hybrid"
        if Path("/sys/fs/cgroup/unified").is_dir()
        else ("v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1")
    )
    return (
        f"{os.cpu_count()} CPUs, kernel {platform.release()}, cgroups {layout}, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )


def run_bench(script: str, engine_names: list[str], measure, watcher_type=None) -> int:
    """The frame every bench script runs in: the root check, a temporary
    directory with the sample image, the engines, and the clean-up whatever
    happens. measure(ctx, engines, skipped, watcher, host) does the work;
    0 when it returns, 1 when the bench broke or was interrupted."""
    if os.geteuid() != 0:
        log(f"{script} must run as root: it starts daemons and real containers")
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    become_subreaper()
    compile_bytecode()
    top = Path(tempfile.mkdtemp(prefix="cbench-"))
    ctx = Context(top, Path(), None, HostPaths())
    engines: list[Engine] = []
    watcher = None
    code = 0
    try:
        ctx.docker_archive, ctx.oci_archive = sample_archives(top)
        watcher = watcher_type() if watcher_type else None
        engines, skipped = start_engines(ctx, engine_names)
        host = host_summary()
        print(f"host: {host}")
        measure(ctx, engines, skipped, watcher, host)
    except BenchError as err:
        log(f"bench failed: {err}")
        code = 1
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        code = 1
    finally:
        cleanup(ctx, engines, watcher, top)
    return code


def main(argv=None) -> int:
    args = parse_args(argv)

    def measure(ctx, engines, skipped, watcher, host):
        results = run_measures(engines, watcher, ctx, args)
        figures = summarize(engines, results, args)
        found = report(engines, skipped, figures, results, args)
        if args.json:
            write_json(args, host, skipped, figures, results, found)

    return run_bench("bench_run.py", args.engine_names, measure, ExecWatcher)


def _interrupt(signum, frame) -> None:
    # SIGTERM takes the same way out as Ctrl-C, through the clean-up.
    raise KeyboardInterrupt


def report(engines, skipped, figures, results, args) -> list[dict]:
    # Other work on the host skews absolute figures; the ratios are interleaved.
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(
        f"runs: {args.runs} per engine for run --rm and run -d (round-robin, "
        f"rotating order, after one warm-up); {args.rounds} rounds of "
        f"{args.concurrent} concurrent run -d, {args.parallel} at a time"
    )
    for engine in engines:
        print(f"  {engine.name}: {engine.version}")
    for name, reason in skipped.items():
        print(f"  {name}: skipped ({reason})")
    print()
    print_table(engines, figures, args)
    print_memory_detail(engines, results, args)
    found = targets(figures)
    print_targets(found)
    return found


def write_json(args, host, skipped, figures, results, found) -> None:
    doc = {
        "host": host,
        "load_average_at_end": os.getloadavg()[0],
        "options": {k: v for k, v in vars(args).items() if k != "json"},
        "skipped": skipped,
        "figures": figures,
        "samples": {
            "run_rm_true_ms": results.run_rm_ms,
            "run_d_until_pid1_ms": results.pid1_ms,
            "run_d_cli_exit_ms": results.run_d_cli_ms,
            "concurrent_per_s": results.rate_per_s,
            "memory_bytes": results.memory,
        },
        "targets": found,
    }
    args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    log(f"wrote {args.json}")


def cleanup(ctx: Context, engines: list[Engine], watcher, top: Path) -> None:
    log("cleaning up")
    for engine in reversed(engines):
        try:
            engine.stop()
        except (BenchError, OSError, subprocess.SubprocessError) as err:
            log(f"  cleaning up {engine.name} failed: {err}")
    if watcher is not None:
        watcher.close()
    end_processes(_mentioning(top))
    unmount_under(top)
    reap_orphans(set())
    shutil.rmtree(top, ignore_errors=True)
    if top.exists():
        log(f"  could not remove all of {top}")
    ctx.host_paths.remove_created()


if __name__ == "__main__":
    sys.exit(main())
