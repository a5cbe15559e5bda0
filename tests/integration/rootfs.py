"""Real containers for the runtime's integration tests.

A busybox rootfs built in a temp dir, a Container that starts runtime.process
inits and execs on it and collects what they print, test-owned cgroups on
hybrid and pure v2 hosts, and a switch between the two ways helpers start.
Only what the tests start is touched.
"""

import contextlib
import ctypes
import os
import secrets
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from runtime import process
from runtime.process import (
    ExecSpec,
    ExitStatus,
    InitSpec,
    Spawned,
    StartResult,
    exit_status,
    spawn_exec,
    spawn_init,
    wait_started,
)

BUSYBOX = Path("/bin/busybox")
CGROUP_ROOT = Path("/sys/fs/cgroup")
TIMEOUT_S = 15
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Run:
    start: StartResult
    exit: ExitStatus
    stdout: str
    stderr: str


class Container:
    """One container's dirs, and helpers to start, exec into and wait."""

    def __init__(self, base: Path, lower: list[Path]):
        self.base = base
        self.lower = lower
        base.mkdir()
        self.upper = base / "upper"
        self.rootfs = base / "rootfs"
        for path in (self.upper, base / "work", self.rootfs):
            path.mkdir()
        self.pidfds: list[int] = []
        self.execs = 0

    def spec(self, args: list[str], **overrides) -> InitSpec:
        fields = {
            "args": args,
            "env": [f"PATH={PATH}"],
            "cwd": "/",
            "user": "",
            "hostname": "probe",
            "network": "none",
            "rootfs_lower": [str(path) for path in self.lower],
            "rootfs_upper": str(self.upper),
            "rootfs_work": str(self.base / "work"),
            "rootfs_target": str(self.rootfs),
        }
        return InitSpec(**(fields | overrides))

    def start(self, spec: InitSpec) -> tuple[StartResult, int | None]:
        return self.started(self.spawn(spec))

    def spawn(self, spec: InitSpec) -> Spawned:
        """Start the helper for spec; see started for the rest."""
        stdout_path, stderr_path = self.base / "stdout", self.base / "stderr"
        with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
            return spawn_init(spec, out.fileno(), err.fileno())

    def started(self, spawned: Spawned) -> tuple[StartResult, int | None]:
        """The start result, and a pidfd of the process if there is one."""
        result = wait_started(spawned, TIMEOUT_S)
        if result.pid is None:
            return result, None
        pidfd = os.pidfd_open(result.pid)
        self.pidfds.append(pidfd)
        return result, pidfd

    def wait(self, pidfd: int) -> ExitStatus:
        readable, _, _ = select.select([pidfd], [], [], TIMEOUT_S)
        assert readable, f"the process did not exit within {TIMEOUT_S} s"
        status = exit_status(pidfd)
        self.pidfds.remove(pidfd)
        os.close(pidfd)
        return status

    def run(self, args: list[str], **overrides) -> Run:
        result, pidfd = self.start(self.spec(args, **overrides))
        assert pidfd is not None, f"no PID 1 was created: {result}"
        status = self.wait(pidfd)
        return Run(
            start=result,
            exit=status,
            stdout=(self.base / "stdout").read_text(),
            stderr=(self.base / "stderr").read_text(),
        )

    def exec_spec(self, target_pid: int, args: list[str], **overrides) -> ExecSpec:
        fields = {
            "target_pid": target_pid,
            "args": args,
            "env": [f"PATH={PATH}"],
            "cwd": "/",
            "user": "",
        }
        return ExecSpec(**(fields | overrides))

    def start_exec(self, spec: ExecSpec) -> tuple[StartResult, int | None, Path]:
        """Start an exec; its output goes to the returned dir's stdout/stderr."""
        self.execs += 1
        out_dir = self.base / f"exec-{self.execs}"
        out_dir.mkdir()
        stdout_path, stderr_path = out_dir / "stdout", out_dir / "stderr"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            spawned = spawn_exec(spec, out.fileno(), err.fileno())
        return (*self.started(spawned), out_dir)

    def exec(self, target_pid: int, args: list[str], **overrides) -> Run:
        result, pidfd, out_dir = self.start_exec(
            self.exec_spec(target_pid, args, **overrides)
        )
        assert pidfd is not None, f"no process was created: {result}"
        status = self.wait(pidfd)
        return Run(
            start=result,
            exit=status,
            stdout=(out_dir / "stdout").read_text(),
            stderr=(out_dir / "stderr").read_text(),
        )

    def kill_leftovers(self) -> None:
        for pidfd in self.pidfds:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], TIMEOUT_S)
            exit_status(pidfd)
            os.close(pidfd)
        self.pidfds.clear()


HELPER_PATHS = ["server", "direct"]


@contextlib.contextmanager
def helper_path(path: str):
    """Start helpers through the helper server ("server") or each in a new
    interpreter ("direct") inside the block; after it, no server runs and
    the choice is the environment's again."""
    process.use_server(path == "server")
    try:
        yield
    finally:
        process.stop_server()
        process.use_server(os.environ.get(process.SERVER_ENV, "1") != "0")


def build_busybox_layer(layer: Path) -> Path:
    """A busybox rootfs: /bin applets, root, nobody and probe, a few files."""
    (layer / "bin").mkdir()
    (layer / "etc").mkdir()
    (layer / "tmp").mkdir(mode=0o1777)
    (layer / "bin" / "busybox").write_bytes(BUSYBOX.read_bytes())
    (layer / "bin" / "busybox").chmod(0o755)
    for applet in applets():
        (layer / "bin" / applet).symlink_to("busybox")
    # probe exists only in the image, so that a lookup that reads the host's
    # files instead of the container's cannot find it.
    (layer / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        "corral-probe:x:4321:4322:probe:/:/bin/sh\n"
    )
    (layer / "etc" / "group").write_text(
        "root:x:0:\n"
        "nobody:x:65534:\n"
        "corral-probe:x:4322:\n"
        "corral-extra:x:4323:corral-probe\n"
    )
    (layer / "etc" / "motd").write_text("from the image\n")
    return layer


def applets() -> list[str]:
    with os.popen(f"{BUSYBOX} --list") as listing:
        return [name for name in listing.read().split() if name != "busybox"]


def wait_for_output(path: Path, marker: str, count: int = 1) -> str:
    """The file's text once marker occurs count times in it."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        output = path.read_text()
        if output.count(marker) >= count:
            return output
        time.sleep(0.02)
    raise AssertionError(f"{path} held {output!r} after {TIMEOUT_S} s")


def make_cgroups(parent: str) -> tuple[list[Path], list[tuple[str, str]]]:
    """A leaf c1 under parent in the hierarchies corral uses on this host,
    and the matching InitSpec.cgroup_mounts: the v1 memory and the unified
    tree on hybrid hosts, the one tree on pure v2 hosts."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        hierarchies, mounts = [CGROUP_ROOT], [("cgroup2", "")]
    else:
        hierarchies = [CGROUP_ROOT / "memory", CGROUP_ROOT / "unified"]
        mounts = [("cgroup", "memory"), ("cgroup2", "unified")]
        missing = [str(path) for path in hierarchies if not path.is_dir()]
        if missing:
            raise LookupError(f"needs a hybrid or v2 layout; missing {missing}")
    leaves = [path / parent / "c1" for path in hierarchies]
    for leaf in leaves:
        leaf.mkdir(parents=True)
    return leaves, mounts


def unique_cgroup_parent() -> str:
    return f"corral-test-{secrets.token_hex(4)}"


def remove_cgroup(path: Path) -> None:
    # A reaped container's cgroup can stay busy for a moment.
    deadline = time.monotonic() + 5
    while True:
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# glibc keeps signals 32 and 33 for itself and refuses to change their
# action, so a test that needs one ignored makes the system call directly.
_SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134, "riscv64": 134}
_SIG_IGN = 1


def _set_action(sig: int, handler: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    action = (ctypes.c_ulong * 4)(handler, 0, 0, 0)
    number = _SYS_RT_SIGACTION[os.uname().machine]
    if libc.syscall(ctypes.c_long(number), sig, ctypes.byref(action), None, 8):
        raise OSError(ctypes.get_errno(), f"rt_sigaction({sig})")


@contextlib.contextmanager
def signals_blocked_and_ignored():
    """Block SIGUSR1 and ignore SIGUSR2 and signal 32 in this process, as a
    careless parent of corrald might; both survive fork and exec."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    _set_action(signal.SIGUSR2, _SIG_IGN)
    _set_action(32, _SIG_IGN)
    try:
        yield
    finally:
        _set_action(32, 0)
        _set_action(signal.SIGUSR2, 0)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
