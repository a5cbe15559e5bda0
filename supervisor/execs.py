"""Commands run inside a running container: docker exec, and health probes.

An exec instance is created first (its id is what clients hold), started
later, and inspected after. Its process joins the container's namespaces,
cgroup and root through runtime.process.spawn_exec, becomes the daemon's
child through the subreaper, and is waited on through its pidfd. Output goes
to whoever started it, never into the container's log.
"""

import os
import secrets
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
import trio

from runtime import process as rt_process

from ._procs import read_to_eof, reap, wait_process
from .container import Container
from .errors import BadParameter, Conflict

log = structlog.get_logger()

READ_BYTES = 64 * 1024
HELPER_TIMEOUT_S = 30
# How long finished exec instances stay inspectable.
MAX_FINISHED_EXECS = 256

Output = Callable[[str, bytes], Awaitable[None]]


@dataclass
class ExecInstance:
    id: str
    container: Container
    args: list[str]
    env: list[str]
    cwd: str
    user: str
    attach_stdout: bool = True
    attach_stderr: bool = True
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    error: str = ""
    done: trio.Event = field(default_factory=trio.Event)

    def inspect(self) -> dict:
        return {
            "ID": self.id,
            "Running": self.running,
            "ExitCode": self.exit_code,
            "ProcessConfig": {
                "tty": False,
                "entrypoint": self.args[0],
                "arguments": self.args[1:],
                "privileged": False,
                "user": self.user,
            },
            "OpenStdin": False,
            "OpenStderr": self.attach_stderr,
            "OpenStdout": self.attach_stdout,
            "CanRemove": False,
            "ContainerID": self.container.id,
            "DetachKeys": "",
            "Pid": self.pid,
        }


def new_exec(container: Container, body: dict) -> ExecInstance:
    """Validate an exec create request (Docker's ExecConfig)."""
    if not isinstance(body, dict):
        raise BadParameter("request body must be a JSON object")
    if body.get("Tty"):
        raise BadParameter(
            "a TTY for exec (-t) is not supported by this version of corral; "
            "run the command without -t"
        )
    if body.get("AttachStdin"):
        raise BadParameter(
            "attaching stdin to exec (-i) is not supported by this version of "
            "corral; run the command without -i"
        )
    if body.get("Privileged"):
        raise BadParameter("privileged exec is not supported by corral")
    cmd = body.get("Cmd")
    if not cmd or not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd):
        raise BadParameter("exec needs a command: Cmd must be a non-empty list of strings")
    env = body.get("Env") or []
    if not isinstance(env, list) or not all(
        isinstance(e, str) and "=" in e and not e.startswith("=") for e in env
    ):
        raise BadParameter(
            f"exec Env must be a list of NAME=value strings, not {env!r}: "
            "give each variable as -e NAME=value"
        )
    workdir = body.get("WorkingDir") or ""
    if not isinstance(workdir, str) or (workdir and not workdir.startswith("/")):
        raise BadParameter(
            f"exec WorkingDir {workdir!r} is not an absolute path: give -w a path "
            "that starts with /"
        )
    user = body.get("User") or ""
    if not isinstance(user, str):
        raise BadParameter(f"exec User must be a string, not {user!r}")
    for text in [*cmd, *env, workdir, user]:
        if "\0" in text:
            raise BadParameter(f"exec setting {text!r} holds a NUL byte")
    config = container.record["Config"]
    return ExecInstance(
        id=secrets.token_hex(32),
        container=container,
        args=cmd,
        env=_merge_env([f"HOSTNAME={config['Hostname']}", *config["Env"]], env),
        cwd=workdir or config["WorkingDir"] or "/",
        user=user or config["User"] or "",
        attach_stdout=bool(body.get("AttachStdout", True)),
        attach_stderr=bool(body.get("AttachStderr", True)),
    )


def _merge_env(base: list[str], extra: list[str]) -> list[str]:
    merged = {item.partition("=")[0]: item for item in base}
    merged.update({item.partition("=")[0]: item for item in extra})
    return list(merged.values())


async def run_exec(inst: ExecInstance, output: Output | None,
                   timeout_s: float | None = None) -> int:
    """Run the instance to its end; returns its exit code.

    A process still running at timeout_s is killed (exit 137) and the
    instance's error says it timed out.
    """
    run = inst.container.run
    if run is None:
        raise Conflict(f"Container {inst.container.id} is not running")
    if inst.started:
        raise Conflict(f"exec {inst.id} has already been started")
    inst.started = True
    inst.running = True
    try:
        return await _run(inst, run, output, timeout_s)
    finally:
        inst.running = False
        inst.done.set()


async def _run(inst, run, output, timeout_s) -> int:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    spec = rt_process.ExecSpec(
        target_pid=run.pid,
        args=inst.args,
        env=inst.env,
        cwd=inst.cwd,
        user=inst.user,
        cgroup_procs=[str(p) for p in run.cgroup.procs_files()],
    )
    try:
        spawned = rt_process.spawn_exec(spec, out_w, err_w)
    except (OSError, ValueError, rt_process.ProcessError) as err:
        os.close(out_r)
        os.close(err_r)
        inst.exit_code, inst.error = 126, f"cannot start exec: {err}"
        return inst.exit_code
    finally:
        os.close(out_w)
        os.close(err_w)
    result = await _collect(spawned)
    if result.error:
        os.close(out_r)
        os.close(err_r)
        if result.pid:
            await reap(result.pid)
        inst.exit_code, inst.error = result.exit_code or 126, result.error
        if output is not None:
            await output("stderr", (result.error + "\n").encode())
        return inst.exit_code
    inst.pid = result.pid
    return await _watch(inst, result.pid, out_r, err_r, output, timeout_s)


async def _watch(inst, pid, out_r, err_r, output, timeout_s) -> int:
    pidfd = os.pidfd_open(pid)
    try:
        async with trio.open_nursery() as pumps:
            pumps.start_soon(_pump, out_r, "stdout", output)
            pumps.start_soon(_pump, err_r, "stderr", output)
            with trio.move_on_after(timeout_s if timeout_s else float("inf")) as scope:
                await trio.lowlevel.wait_readable(pidfd)
            if scope.cancelled_caught:
                inst.error = f"timed out after {timeout_s:g} s"
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                _kill_group(pid)
                await trio.lowlevel.wait_readable(pidfd)
            status = rt_process.exit_status(pidfd)
            # Children of the exec'd command may hold the pipes open; they
            # get a moment to finish writing, no more.
            pumps.cancel_scope.deadline = trio.current_time() + 1
    finally:
        os.close(pidfd)
    inst.exit_code = status.exit_code
    return inst.exit_code


def _kill_group(pid: int) -> None:
    # The exec'd command leads its own process group; its children (a shell
    # probe's, say) go with it. The leader is our unreaped child, so its
    # group id cannot have been reused.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def _pump(fd: int, stream: str, output: Output | None) -> None:
    pipe = trio.lowlevel.FdStream(fd)
    try:
        while data := await pipe.receive_some(READ_BYTES):
            if output is not None:
                await output(stream, data)
    finally:
        await pipe.aclose()


async def _collect(spawned) -> "rt_process.StartResult":
    with trio.move_on_after(HELPER_TIMEOUT_S) as scope:
        data = await read_to_eof(spawned.status_fd)
        await wait_process(spawned.helper)
    if scope.cancelled_caught:
        spawned.helper.kill()
        await wait_process(spawned.helper)
        return rt_process.StartResult(
            pid=None, error="the exec helper did not finish in time", exit_code=126
        )
    return rt_process.parse_status(data)
