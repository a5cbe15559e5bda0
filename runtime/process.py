"""Starting a container's init helper and reading what became of it.

The daemon never forks itself: it has threads, and a forked copy of a threaded
process may deadlock before exec. spawn_init has runtime/_init.py's helper
started; the helper unshares the namespaces, forks the container's PID 1 and
exits. spawn_exec has the same helper started to run one more command in a
running container: it joins PID 1's namespaces and cgroups, forks the
command's process and exits. The caller must be a child subreaper (see
runtime._sys.set_child_subreaper) so that either process becomes its child.

A helper is started in one of two ways, the same for the caller:
- through the helper server (the default): _init.py in server mode, started
  once through subprocess, forks each helper from an interpreter that has
  already started and imported everything, saving some 8 ms of time and CPU
  on each start and exec. It hands the helper over to the caller, whose child
  it then is (see _init.py), and exits when the caller closes its end of the
  socket. It is started at the first spawn or by start_server, restarted once
  if it has died, and given up for good (with one warning, through
  start_server's on_fallback) if it cannot run. A spawn blocks until the
  server has forked the helper, about 1 ms; a Popen returns sooner, but its
  helper then takes longer to start;
- directly (CORRAL_HELPER_SERVER=0, use_server(False), or after the server
  was given up): a new interpreter per helper, through subprocess.

The spec travels as JSON in a memfd: written whole before the helper starts,
it has no size limit and needs no writer thread, unlike a pipe. The helper
reports on a status pipe, one JSON line per message:

    {"pid": 4242}                                  the process exists (host pid)
    {"error": "exec: ...", "exit_code": 127}       setup or exec failed

EOF on the pipe means the helper has exited and the process has exec'd or
died. The two lines may come in either order; parse_status reads all of them.
Reaping the helper (helper.wait(), immediate after EOF) guarantees that the
process has been reparented to the caller: only then can it be waited on
through a pidfd.
"""

import dataclasses
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runtime import _sys

INIT_HELPER = Path(__file__).with_name("_init_entry.py")

EXIT_SETUP = 125

# "0" turns the helper server off in this process: every helper then starts
# a new interpreter.
SERVER_ENV = "CORRAL_HELPER_SERVER"
# The server replies once it has forked the helper: normally within a few ms.
SERVER_REPLY_TIMEOUT_S = 10
# How long to wait for a server that dies with a request unanswered to be
# gone, and for the request's fds to be released with it.
SERVER_GONE_WAIT_S = 1
SERVER_REPLY_MAX_BYTES = 4096
# The server's command line, but for "--socket-fd N".
SERVER_COMMAND = [sys.executable, "-I", "-S", str(INIT_HELPER), "--mode", "server"]

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


class ForkedHelper:
    """A helper the helper server forked. It is the caller's child, waited on
    and killed as the subprocess.Popen of a helper started directly is."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        # Not reaped yet, so the pid still names the helper.
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


@dataclass
class Spawned:
    """A started helper, the caller's child either way. After EOF on
    status_fd, helper.wait() returns at once; the process it started (PID 1,
    or an exec'd process) can be waited on through a pidfd only after that."""

    helper: subprocess.Popen | ForkedHelper
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
    with _server.lock:
        if _server.enabled and _server.broken is None:
            spawned = _spawn_served(mode, message, pass_fds, stdout_fd, stderr_fd)
            if spawned is not None:
                return spawned
    return _spawn_direct(mode, message, pass_fds, stdout_fd, stderr_fd)


def _spawn_direct(mode, message, pass_fds, stdout_fd, stderr_fd) -> Spawned:
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


# ---- the helper server -------------------------------------------------------


def start_server(on_fallback: Callable[[str], None] | None = None) -> None:
    """Start the helper server now instead of at the first spawn.

    on_fallback(message) is called once, from a spawn or from here, if the
    server cannot be started, or dies and cannot be restarted at once: spawns
    then start each helper directly, in a new interpreter, until use_server
    is called again. Without it, the message goes to warnings.warn as a
    RuntimeWarning. Nothing is started when the server is turned off (see
    use_server).
    """
    _check_subreaper("start the helper server", "the helpers it forks")
    with _server.lock:
        _server.on_fallback = on_fallback
        if _server.enabled and _server.broken is None and _server.process is None:
            _start_server_process()


def stop_server() -> None:
    """Stop the helper server, if one runs; the next spawn starts another.

    Helpers it started run on: they are the caller's children.
    """
    with _server.lock:
        _discard_server()


def use_server(enabled: bool) -> None:
    """Start helpers through the helper server, or each in a new interpreter.

    The default is the server unless CORRAL_HELPER_SERVER=0 is set. Turning
    it off stops a running server; turning it on again also ends a fallback
    after a failure.
    """
    with _server.lock:
        _server.enabled = enabled
        _server.broken = None
        if not enabled:
            _discard_server()


def server_pid() -> int | None:
    """The pid of the running helper server, if there is one."""
    process = _server.process
    return None if process is None else process.popen.pid


class _ServerGone(Exception):
    """The server closed its end of the socket."""

    def __init__(self, after_send: bool):
        super().__init__()
        self.after_send = after_send


class _ServerFailed(ProcessError):
    """The server failed a request in a way that leaves it unusable: it did
    not answer (a late answer would be read as the next one's), answered
    nonsense, or died while a helper it may have started runs on."""


class _ServerProcess:
    """A running helper server and the caller's end of its socket."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # stderr stays the caller's, where a crash of the server shows.
            self.popen = subprocess.Popen(
                [*SERVER_COMMAND, "--socket-fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                close_fds=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env={},
                cwd="/",
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(SERVER_REPLY_TIMEOUT_S)
        self.sock = ours

    def request(self, mode: str, fds: list[int], numbers: list[int]) -> int:
        """The pid of a helper forked with fds (stdout, stderr, then the fds
        that keep their numbers, as listed in numbers)."""
        payload = json.dumps({"mode": mode, "fds": numbers}).encode()
        try:
            socket.send_fds(self.sock, [payload], fds)
        except OSError as err:
            if err.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise _ServerGone(after_send=False) from err
            raise
        try:
            data = self.sock.recv(SERVER_REPLY_MAX_BYTES)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            raise _ServerFailed(
                "cannot start the container init helper: the helper server "
                f"(pid {self.popen.pid}) did not answer within "
                f"{SERVER_REPLY_TIMEOUT_S} s; it is stopped, and the next "
                "start or exec starts another"
            ) from None
        if not data:
            raise _ServerGone(after_send=True)
        reply = _parse_reply(data)
        if "error" in reply:
            raise ProcessError(
                f"cannot start the container init helper: {reply['error']}"
            )
        return reply["pid"]

    def close(self) -> None:
        """Close the socket, on which the server exits, and reap it."""
        self.sock.close()
        try:
            self.popen.wait(SERVER_GONE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _parse_reply(data: bytes) -> dict:
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if isinstance(reply, dict) and (
        isinstance(reply.get("pid"), int) or isinstance(reply.get("error"), str)
    ):
        return reply
    raise _ServerFailed(
        f"cannot start the container init helper: the helper server sent a "
        f"malformed reply {data[:200]!r}; it is stopped, and the next start or "
        "exec starts another"
    )


@dataclass
class _ServerState:
    enabled: bool
    process: _ServerProcess | None = None
    # Why spawns went back to the direct path, for good.
    broken: str | None = None
    on_fallback: Callable[[str], None] | None = None
    # Spawns come from the daemon's event loop thread; the lock is for any
    # other caller.
    lock: threading.Lock = field(default_factory=threading.Lock)


_server = _ServerState(enabled=os.environ.get(SERVER_ENV, "1") != "0")


def _spawn_served(mode, message, pass_fds, stdout_fd, stderr_fd) -> Spawned | None:
    """A helper forked by the server, restarted once if it has died; None
    once the server cannot run."""
    statuses = []
    for _ in range(2):
        if _server.process is None and not _start_server_process():
            return None
        try:
            spawned = _request_helper(
                _server.process, mode, message, pass_fds, stdout_fd, stderr_fd
            )
        except _ServerFailed:
            _discard_server()
            raise
        if spawned is not None:
            return spawned
        popen = _server.process.popen
        _discard_server()
        statuses.append(popen.returncode)
    _give_up_server(
        f"it exited before answering (status {statuses[0]}), and so did the "
        f"one started in its place (status {statuses[1]}); any error it "
        "printed is on corrald's stderr"
    )
    return None


def _request_helper(server, mode, message, pass_fds, stdout_fd, stderr_fd):
    """A helper forked by server; None if the server is gone and no helper
    was started, so that the request can go to another."""
    spec_fd = _write_spec(message)
    status_read, status_write = os.pipe2(os.O_CLOEXEC)
    fds = [spec_fd, status_write, *pass_fds]
    try:
        try:
            pid = server.request(mode, [stdout_fd, stderr_fd, *fds], fds)
        finally:
            os.close(spec_fd)
            # Only the helper and its child may hold the write end, or EOF
            # never comes.
            os.close(status_write)
    except _ServerGone as gone:
        started = gone.after_send and not _nothing_started(server, status_read)
        os.close(status_read)
        if started:
            raise _ServerFailed(
                "cannot start the container init helper: the helper server "
                "stopped while it started one, which may run on; it will be "
                "restarted at the next start or exec"
            ) from None
        return None
    except BaseException:
        os.close(status_read)
        raise
    os.set_blocking(status_read, False)
    return Spawned(helper=ForkedHelper(pid), status_fd=status_read)


def _nothing_started(server: _ServerProcess, status_read: int) -> bool:
    """After the server died with a request unanswered: whether no process
    holds or wrote the request's status pipe, so that no helper runs."""
    # The server's copies of the request's fds are closed once it is gone.
    server.close()
    poller = select.poll()
    poller.register(status_read, select.POLLIN)
    if not poller.poll(SERVER_GONE_WAIT_S * 1000):
        return False
    return os.read(status_read, 1) == b""


def _start_server_process() -> bool:
    try:
        _server.process = _ServerProcess()
    except OSError as err:
        _give_up_server(f"starting {SERVER_COMMAND[0]} failed ({err.strerror})")
        return False
    return True


def _discard_server() -> None:
    if _server.process is not None:
        _server.process.close()
        _server.process = None


def _give_up_server(reason: str) -> None:
    _server.broken = reason
    message = (
        f"the container init helper server cannot run: {reason}; each "
        "container start and exec now starts a new interpreter instead, "
        "some 8 ms slower; restart corrald to use the server again"
    )
    if _server.on_fallback is not None:
        _server.on_fallback(message)
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=2)


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
