"""Starting a container's init helper and reading what became of it.

The daemon never forks itself: it has threads, and a forked copy of a threaded
process may deadlock before exec. spawn_init starts runtime/_init.py through
subprocess (fork_exec); the helper unshares the namespaces, forks the
container's PID 1 and exits. spawn_exec starts the same helper to run one more
command in a running container: it joins PID 1's namespaces and cgroups, forks
the command's process and exits. The caller must be a child subreaper (see
runtime._sys.set_child_subreaper) so that either process becomes its child.

The spec travels as JSON in a memfd: written whole before the helper starts,
it has no size limit and needs no writer thread, unlike a pipe. The helper
reports on a status pipe, one JSON line per message:

    {"pid": 4242}                                  the process exists (host pid)
    {"error": "exec: ...", "exit_code": 127}       setup or exec failed

EOF on the pipe means the helper has exited and the process has exec'd or
died. The two lines may come in either order; parse_status reads all of them.
Reaping the helper (Popen.wait, immediate after EOF) guarantees that the
process has been reparented to the caller: only then can it be waited on
through a pidfd.
"""

import dataclasses
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime import _sys

INIT_HELPER = Path(__file__).with_name("_init_entry.py")

EXIT_SETUP = 125

# Debian's tini package: a static build runs in any image, libc or not.
DEFAULT_INIT_PATH = "/usr/bin/tini-static"


class ProcessError(Exception):
    """The init helper could not be started or did not report in time."""


class ContainerNotRunning(ProcessError):
    """An exec targets a container whose PID 1 is gone."""


@dataclass
class InitSpec:
    """Everything the init helper needs to build and start one container."""

    args: list[str]
    env: list[str]
    cwd: str
    user: str  # "" (root), "name", "uid", "uid:gid", "name:group"
    hostname: str
    network: str  # "none": new netns with lo up; "host": the host's
    rootfs_lower: list[str]  # image layer dirs, top-most first
    rootfs_upper: str
    rootfs_work: str
    rootfs_target: str  # overlay mountpoint, inside the container's mount ns
    cgroup_procs: list[str] = field(default_factory=list)
    cgroup_mounts: list[tuple[str, str]] = field(default_factory=list)
    bind_files: dict[str, str] = field(default_factory=dict)
    # A host program (see DEFAULT_INIT_PATH) bind-mounted read-only at
    # /sbin/corral-init and run as PID 1 with ["--", *args], like Docker's
    # --init: it forwards signals to the command and reaps orphans.
    init_path: str | None = None


@dataclass
class ExecSpec:
    """One more command to run in a running container, like docker exec.

    The caller resolves what Docker resolves: env is the final environment
    (the container's plus the exec's), cwd the exec's WorkingDir, else the
    container's, else "/"; it must exist, nothing creates it. user is the
    exec's User, else the container's ("" is root), in the forms of
    InitSpec.user, looked up in the container's /etc/passwd and /etc/group.
    cgroup_procs are the container's, as given to its InitSpec; without them
    the process stays in the caller's cgroups.
    """

    target_pid: int  # host pid of the container's PID 1
    args: list[str]
    env: list[str]
    cwd: str
    user: str
    cgroup_procs: list[str] = field(default_factory=list)


@dataclass
class Spawned:
    """A started helper. After EOF on status_fd, helper.wait() returns at
    once; the process it started (PID 1, or an exec'd process) can be waited
    on through a pidfd only after that."""

    helper: subprocess.Popen
    status_fd: int  # read end of the status pipe, O_NONBLOCK | O_CLOEXEC


@dataclass
class StartResult:
    pid: int | None  # the process's host pid; it must be reaped even on error
    error: str | None
    exit_code: int | None


@dataclass
class ExitStatus:
    exit_code: int  # the exit code, or 128 + signal number
    signal: int | None


def spawn_init(spec: InitSpec, stdout_fd: int, stderr_fd: int) -> Spawned:
    """Start the init helper for spec, with the container's stdout/stderr.

    The caller owns the returned status_fd; it reads it to EOF (see
    wait_started), then reaps the helper, then waits on PID 1.
    """
    validate_spec(spec)
    _check_subreaper("start a container", "the container's PID 1")
    return _spawn("init", dataclasses.asdict(spec), (), stdout_fd, stderr_fd)


def spawn_exec(spec: ExecSpec, stdout_fd: int, stderr_fd: int) -> Spawned:
    """Start the helper that runs spec in a running container.

    The process joins the cgroups, the cgroup, ipc, uts, net, pid and mount
    namespaces and the root directory of the container's PID 1, leads a
    session (and process group) of its own, and is not PID 1: it dies when
    the container's PID 1 does. Its stdin is /dev/null; there is no terminal.
    It runs until it exits; a caller that enforces a timeout (a health probe)
    sends SIGKILL through its pidfd, and may signal its process group with
    os.killpg(pid, ...) to reach its descendants too, as long as it has not
    reaped the process (until then the pid cannot name anything else).
    Descendants that outlive it are adopted by the container's PID 1, which
    reaps them only if it is an init (InitSpec.init_path).

    Raises ContainerNotRunning if PID 1 is gone. If it has exited but is
    not reaped yet, or exits before the process joins it, the status says
    so instead, with the same message and exit code 125. The caller reads
    status_fd to EOF, reaps the helper, then waits on the process, as for
    spawn_init.
    """
    validate_exec_spec(spec)
    _check_subreaper("exec in a container", "the exec'd process")
    try:
        target_pidfd = os.pidfd_open(spec.target_pid)
    except ProcessLookupError as err:
        raise ContainerNotRunning(
            f"container is not running: its PID 1 (host pid {spec.target_pid}) "
            "has exited; start the container, then exec again"
        ) from err
    message = dataclasses.asdict(spec) | {"target_pidfd": target_pidfd}
    try:
        return _spawn("exec", message, (target_pidfd,), stdout_fd, stderr_fd)
    finally:
        os.close(target_pidfd)


def _check_subreaper(action: str, process: str) -> None:
    if not _sys.is_child_subreaper():
        raise ProcessError(
            f"cannot {action}: this process is not a child subreaper, so "
            f"{process} could not be waited on; call "
            "runtime._sys.set_child_subreaper() at startup"
        )


def _spawn(mode, message, pass_fds, stdout_fd, stderr_fd) -> Spawned:
    spec_fd = _write_spec(message)
    status_read, status_write = os.pipe2(os.O_CLOEXEC)
    fds = (spec_fd, status_write, *pass_fds)
    try:
        helper = _start_helper(mode, fds, stdout_fd, stderr_fd)
    except BaseException:
        os.close(status_read)
        raise
    finally:
        os.close(spec_fd)
        # Only the helper and its child may hold the write end, or EOF never
        # comes.
        os.close(status_write)
    os.set_blocking(status_read, False)
    return Spawned(helper=helper, status_fd=status_read)


def validate_spec(spec: InitSpec) -> None:
    """Refuse what the helper could only fail on later, with a vaguer error."""
    if not spec.args:
        raise ValueError("cannot start a container without a command")
    for text in [*spec.args, *spec.env, spec.cwd, spec.user, spec.hostname]:
        if "\0" in text:
            raise ValueError(f"invalid container setting {text!r}: holds a NUL byte")
    for entry in spec.env:
        if "=" not in entry or entry.startswith("="):
            raise ValueError(f'invalid environment entry "{entry}": want NAME=value')
    if not spec.cwd.startswith("/"):
        raise ValueError(f'invalid working directory "{spec.cwd}": must be absolute')
    if not spec.hostname:
        raise ValueError("cannot start a container without a hostname")
    if spec.network not in ("none", "host"):
        raise ValueError(f'unknown network mode "{spec.network}"; use none or host')
    for path in spec.bind_files:
        if not path.startswith("/"):
            raise ValueError(f'invalid container path "{path}": must be absolute')
    for path in [*spec.rootfs_lower, spec.rootfs_upper, spec.rootfs_work]:
        if "," in path or ":" in path:
            raise ValueError(
                f'cannot use "{path}" in an overlay mount: it holds "," or ":"'
            )
    if spec.init_path is not None:
        _validate_init_path(spec.init_path)


def _validate_init_path(path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f'invalid init program "{path}": must be an absolute path')
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise ValueError(
            f"cannot use {path} as the container's init: not an executable file "
            "on this host; install Debian's tini package (apt-get install tini)"
        )


def validate_exec_spec(spec: ExecSpec) -> None:
    """Refuse what the helper could only fail on later, with a vaguer error."""
    if spec.target_pid <= 0:
        raise ValueError(f"invalid target pid {spec.target_pid}: must be positive")
    if not spec.args:
        raise ValueError("cannot exec in a container without a command")
    for text in [*spec.args, *spec.env, spec.cwd, spec.user]:
        if "\0" in text:
            raise ValueError(f"invalid exec setting {text!r}: holds a NUL byte")
    for entry in spec.env:
        if "=" not in entry or entry.startswith("="):
            raise ValueError(f'invalid environment entry "{entry}": want NAME=value')
    if not spec.cwd.startswith("/"):
        raise ValueError(f'invalid working directory "{spec.cwd}": must be absolute')


def _write_spec(message: dict) -> int:
    spec_fd = os.memfd_create("corral-init-spec", os.MFD_CLOEXEC)
    data = json.dumps(message).encode()
    try:
        written = 0
        while written < len(data):
            written += os.write(spec_fd, data[written:])
    except BaseException:
        os.close(spec_fd)
        raise
    return spec_fd


def _start_helper(mode: str, fds: tuple, stdout_fd: int, stderr_fd: int):
    spec_fd, status_fd, *_ = fds
    argv = [
        sys.executable,
        "-I",
        "-S",
        str(INIT_HELPER),
        "--mode",
        mode,
        "--spec-fd",
        str(spec_fd),
        "--status-fd",
        str(status_fd),
    ]
    try:
        return subprocess.Popen(
            argv,
            pass_fds=fds,
            close_fds=True,
            stdin=subprocess.DEVNULL,
            stdout=stdout_fd,
            stderr=stderr_fd,
            env={},
            cwd="/",
            start_new_session=True,
        )
    except OSError as err:
        raise ProcessError(
            f"cannot start the container init helper {INIT_HELPER} with "
            f"{sys.executable}: {err.strerror}; check the corral installation"
        ) from err


def parse_status(data: bytes) -> StartResult:
    """Turn everything read from the status pipe up to EOF into a result."""
    messages = {}
    for line in data.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            return StartResult(
                pid=messages.get("pid"),
                error=f"the container init helper sent a malformed status: {line!r}",
                exit_code=EXIT_SETUP,
            )
        messages.update(message)
    if "pid" not in messages and "error" not in messages:
        return StartResult(
            pid=None,
            error=(
                "the container init helper exited without reporting; "
                "its output is in the container's log"
            ),
            exit_code=EXIT_SETUP,
        )
    return StartResult(
        pid=messages.get("pid"),
        error=messages.get("error"),
        exit_code=messages.get("exit_code"),
    )


def wait_started(spawned: Spawned, timeout_s: float) -> StartResult:
    """Block until the helper is done; for callers without an event loop.

    Reads status_fd to EOF, closes it, reaps the helper and parses the
    status. On timeout the helper is killed and ProcessError raised; a PID 1
    it may have created is then the caller's to kill and reap.
    """
    deadline = time.monotonic() + timeout_s
    try:
        data = _read_to_eof(spawned.status_fd, deadline)
    finally:
        os.close(spawned.status_fd)
    if data is None:
        spawned.helper.kill()
        spawned.helper.wait()
        raise ProcessError(
            f"the container init helper did not finish within {timeout_s} s"
        )
    spawned.helper.wait()
    return parse_status(data)


def _read_to_eof(fd: int, deadline: float) -> bytes | None:
    """All of a non-blocking fd's data up to EOF; None at the deadline."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks = []
    while True:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            return None
        if not poller.poll(remaining_s * 1000):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def exit_status(pidfd: int) -> ExitStatus | None:
    """Reap the process behind pidfd if it has exited, else return None."""
    result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return ExitStatus(exit_code=result.si_status, signal=None)
    return ExitStatus(exit_code=128 + result.si_status, signal=result.si_status)
