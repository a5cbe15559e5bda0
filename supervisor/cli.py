"""corral: the command-line client. It holds no state and only speaks HTTP.

Output and exit codes follow docker's: `run` exits with the container's exit
code, 125 when the daemon refuses, 126/127 when the command cannot be run;
a malformed command line exits 2.

Start-up is most of what a short command costs, so this module imports only
what every command needs: a command imports json, time or the unit parsers
where it uses them, and main() builds the parser of the one command it
runs. main() is also the one place the process ends: it flushes the output
and leaves with os._exit, skipping the interpreter's teardown.
"""

import argparse
import os
import sys

from .client import Client, ClientError, read_frames

EXIT_DAEMON_REFUSED = 125
EXIT_USAGE = 2

_HELP_WIDTH = 78


class _UsageError(Exception):
    """A command line that parsed but makes no sense; the message says why."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists an option as `-e, --env VALUE`, with its value named once."""

    def __init__(self, prog: str):
        # A fixed width: argparse would import shutil to measure the
        # terminal each time an argument is added, which costs more than
        # the whole parse.
        super().__init__(prog, width=_HELP_WIDTH, max_help_position=32)

    def _format_action_invocation(self, action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(
            action, self._get_default_metavar_for_optional(action)
        )
        return f"{', '.join(action.option_strings)} {value}"


class _Command:
    def __init__(self, run, usage: str, add_arguments, passthrough: bool):
        self.run = run
        self.summary = run.__doc__.strip().splitlines()[0]
        self.usage = usage
        self.add_arguments = add_arguments
        self.passthrough = passthrough

    def parser(self, name: str) -> argparse.ArgumentParser:
        usage = f"corral {name} {self.usage}"
        return _parser(f"corral {name}", usage, self.summary, self.add_arguments)

    def parse(self, parser: argparse.ArgumentParser, args: list[str]):
        # run, create and exec end their own options at the first word that
        # is not one (the image, the container): what follows is the
        # command's, flags and all. The others take options anywhere.
        if self.passthrough:
            return parser.parse_args(args)
        return parser.parse_intermixed_args(args)


_COMMANDS: dict[str, _Command] = {}


def _command(
    usage: str, add_arguments=None, name: str | None = None, passthrough: bool = False
):
    """Register a subcommand; its docstring's first line is its summary."""

    def register(run):
        _COMMANDS[name or run.__name__] = _Command(
            run, usage, add_arguments, passthrough
        )
        return run

    return register


def _parser(prog: str, usage: str, description: str, add_arguments, epilog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=usage,
        description=description,
        epilog=epilog,
        formatter_class=_HelpFormatter,
        add_help=False,
        allow_abbrev=False,
    )
    if add_arguments:
        add_arguments(parser)
    # -h is --hostname for run and create, so help is --help everywhere.
    parser.add_argument("--help", action="help", help="Show this message and exit.")
    return parser


def _main_parser() -> argparse.ArgumentParser:
    commands = "\n".join(
        f"  {name:<8} {_COMMANDS[name].summary}" for name in sorted(_COMMANDS)
    )
    return _parser(
        "corral",
        "corral [OPTIONS] COMMAND [ARGS]...",
        "corral: run Linux containers and keep them running.",
        _main_arguments,
        f"commands:\n{commands}",
    )


def _main_arguments(p) -> None:
    p.add_argument(
        "-H",
        "--host",
        metavar="HOST",
        help="daemon socket, unix:///path [env CORRAL_HOST; "
        "default unix:///run/corral/corral.sock]",
    )
    p.add_argument("command", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


# ---- process boundary --------------------------------------------------------


def main() -> None:
    """The `corral` console script: run one command line and end the process."""
    code = run_cli(sys.argv[1:])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            # The reader went away (EPIPE): there is nobody left to tell.
            code = code or 1
    os._exit(code)


def run_cli(argv: list[str]) -> int:
    """Run one corral command line in this process; return its exit code."""
    try:
        return _dispatch(argv)
    except SystemExit as done:
        return _exit_status(done.code)
    except ClientError as err:
        _say_error(err)
        return 1
    except KeyboardInterrupt:
        _echo("\nAborted!", err=True)
        return 1
    except BrokenPipeError:
        return 1


def _dispatch(argv: list[str]) -> int:
    top = _main_parser()
    options = top.parse_args(argv)
    if options.command is None:
        top.print_help(sys.stderr)
        return EXIT_USAGE
    command = _COMMANDS.get(options.command)
    if command is None:
        top.error(_unknown_command(options.command))
    parser = command.parser(options.command)
    args = command.parse(parser, options.args)
    client = Client(options.host)
    try:
        return command.run(client, args) or 0
    except _UsageError as err:
        parser.error(str(err))


def _unknown_command(name: str) -> str:
    import difflib

    message = f"no such command {name!r}"
    close = difflib.get_close_matches(name, _COMMANDS, n=1)
    return f"{message}; did you mean {close[0]!r}?" if close else message


def _exit_status(code) -> int:
    if code is None or isinstance(code, int):
        return code or 0
    _echo(str(code), err=True)
    return 1


def _echo(text="", err: bool = False) -> None:
    # Flushed line by line, so a follower of `events` or `wait` sees each
    # line as it comes, even through a pipe.
    stream = sys.stderr if err else sys.stdout
    stream.write(f"{text}\n")
    stream.flush()


def _say_error(err: ClientError) -> None:
    _echo(
        f"Error response from daemon: {err.message}" if err.status else err.message,
        err=True,
    )


def _fail(err: ClientError, code: int = 1):
    _say_error(err)
    sys.exit(code)


def _flag(parser, *names: str, **kwargs) -> None:
    parser.add_argument(*names, action="store_true", **kwargs)


def _repeated(parser, *names: str, **kwargs) -> None:
    parser.add_argument(*names, action="append", default=[], **kwargs)


def _file(value: str) -> str:
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value!r} is a directory, not a file")
    return value


def _existing_file(value: str) -> str:
    if not os.path.exists(value):
        raise argparse.ArgumentTypeError(f"file {value!r} does not exist")
    return _file(value)


# ---- run and create ----------------------------------------------------------


def _create_arguments(p) -> None:
    p.add_argument("--name", help="container name")
    _repeated(
        p, "-e", "--env", metavar="KEY[=VALUE]", help="set an environment variable"
    )
    _repeated(
        p,
        "--env-file",
        metavar="FILE",
        type=_file,
        help="read environment variables from a file",
    )
    p.add_argument(
        "-w", "--workdir", metavar="DIR", help="working directory inside the container"
    )
    p.add_argument("-u", "--user", help="user[:group] to run as")
    p.add_argument("-h", "--hostname", metavar="NAME", help="container host name")
    p.add_argument(
        "--entrypoint", metavar="PATH", help="override the image's entrypoint"
    )
    p.add_argument(
        "-m", "--memory", metavar="SIZE", help="memory limit (for example 64m)"
    )
    p.add_argument(
        "--memory-swap",
        metavar="SIZE",
        help="memory plus swap limit; -1 for unlimited swap",
    )
    p.add_argument("--cpus", metavar="N", help="number of CPUs (for example 0.5)")
    p.add_argument(
        "--pids-limit", metavar="N", type=int, help="maximum number of processes"
    )
    p.add_argument(
        "--network",
        metavar="MODE",
        default="none",
        help="none (own namespace, loopback only) or host  [default: none]",
    )
    # Docker's options that corrald does not support yet: taken here so that
    # the daemon refuses them with its message (exit 125), not argparse.
    for flags, dest, kind in _REFUSED_FLAGS:
        if kind == "list":
            p.add_argument(*flags, dest=dest, action="append", default=[],
                           metavar="VALUE", help=argparse.SUPPRESS)
        else:
            p.add_argument(*flags, dest=dest, action="store_true",
                           help=argparse.SUPPRESS)
    p.add_argument(
        "--restart",
        metavar="POLICY",
        default="no",
        help="no, on-failure[:N], always or unless-stopped  [default: no]",
    )
    p.add_argument(
        "--restart-delay",
        metavar="DURATION",
        help="first restart delay (default 100ms)",
    )
    p.add_argument(
        "--restart-max-delay",
        metavar="DURATION",
        help="cap of the restart delay (default 1m)",
    )
    p.add_argument(
        "--restart-reset-after",
        metavar="DURATION",
        help="a run this long resets the delay (default 10s)",
    )
    p.add_argument(
        "--restart-factor",
        metavar="X",
        type=float,
        help="delay multiplier per consecutive restart (default 2)",
    )
    p.add_argument(
        "--restart-jitter",
        metavar="FRACTION",
        type=float,
        help="random spread of each delay, a fraction in [0, 1)",
    )
    p.add_argument(
        "--start-limit",
        metavar="B/T",
        help="B/T: give up after B restarts within T (for example 5/30s)",
    )
    p.add_argument(
        "--health-cmd",
        metavar="CMD",
        help="command to check health (run by /bin/sh -c)",
    )
    p.add_argument(
        "--health-interval",
        metavar="DURATION",
        help="time between checks (default 30s)",
    )
    p.add_argument(
        "--health-timeout",
        metavar="DURATION",
        help="time a check may take (default 30s)",
    )
    p.add_argument(
        "--health-retries",
        metavar="N",
        type=int,
        help="failures in a row that make it unhealthy (default 3)",
    )
    p.add_argument(
        "--health-start-period",
        metavar="DURATION",
        help="grace time after start (default 0s)",
    )
    p.add_argument(
        "--health-start-interval",
        metavar="DURATION",
        help="time between checks in the start period (default 5s)",
    )
    _flag(p, "--no-healthcheck", help="disable the image's check")
    p.add_argument(
        "--health-on-failure",
        metavar="ACTION",
        default="none",
        choices=["none", "restart", "stop", "kill"],
        help="what to do when the container turns unhealthy: none, "
        "restart, stop or kill  [default: none]",
    )
    _flag(
        p,
        "--oom-kill-group",
        help="an OOM kill ends every process of the container, not only one",
    )
    p.add_argument(
        "--pressure-threshold",
        metavar="R=PCT,...",
        action="append",
        default=[],
        help="stall share that makes a resource (cpu, memory, io) high, e.g. "
        "memory=20%%,cpu=80%%  [default: cpu=80%%,memory=20%%,io=40%%]",
    )
    p.add_argument(
        "--pressure-action",
        metavar="R:PCT:DURATION:ACTION",
        action="append",
        default=[],
        help="restart, stop or kill the container when a resource's stall share "
        "stays at or above PCT for DURATION, e.g. memory:60%%:30s:restart",
    )
    _flag(
        p,
        "--init",
        dest="use_init",
        help="run an init as PID 1 that forwards signals and reaps zombies",
    )
    _flag(p, "--rm", dest="auto_remove", help="remove the container when it exits")
    p.add_argument(
        "--stop-signal", metavar="SIGNAL", help="signal that stops the container"
    )
    p.add_argument(
        "--stop-timeout",
        metavar="SECONDS",
        type=int,
        help="seconds to wait before SIGKILL",
    )
    _repeated(p, "-l", "--label", metavar="KEY=VALUE", help="set a label key=value")
    _repeated(p, "--log-opt", metavar="KEY=VALUE", help="max-size=SIZE or max-file=N")
    p.add_argument("image", metavar="IMAGE", help=argparse.SUPPRESS)
    _command_argument(p)


def _command_argument(p) -> None:
    """The command after the image or container: every word, flags and all."""
    command = p.add_argument(
        "command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS
    )
    # argparse counts a positional as required whatever its nargs; an empty
    # command means the image's own (exec checks for one itself).
    command.required = False


def _run_arguments(p) -> None:
    _flag(p, "-d", "--detach", help="run in the background, print the id")
    _create_arguments(p)


def _size(value: str | None, flag: str) -> int:
    from .units import parse_size

    if value is None:
        return 0
    if value.strip() == "-1":
        return -1
    try:
        return parse_size(value)
    except ValueError as err:
        raise _UsageError(f"invalid {flag}: {err}") from None


# (flags, dest, list or bool): where corrald has no support yet.
_REFUSED_FLAGS = [
    (("-p", "--publish"), "publish", "list"),
    (("-P", "--publish-all"), "publish_all", "bool"),
    (("-v", "--volume"), "volume", "list"),
    (("--mount",), "mount", "list"),
    (("-t", "--tty"), "tty", "bool"),
    (("-i", "--interactive"), "interactive", "bool"),
    (("--privileged",), "privileged", "bool"),
    (("--cap-add",), "cap_add", "list"),
    (("--device",), "device", "list"),
    (("--link",), "link", "list"),
    (("--volumes-from",), "volumes_from", "list"),
]


def _refused_fields(o) -> tuple[dict, dict]:
    """(Config, HostConfig) fields of the unsupported options given."""
    config = {"Tty": o.tty, "OpenStdin": o.interactive}
    host = {
        "PortBindings": {p: [{}] for p in o.publish},
        "PublishAllPorts": o.publish_all,
        "Binds": o.volume,
        "Mounts": [{"Spec": m} for m in o.mount],
        "Privileged": o.privileged,
        "CapAdd": o.cap_add,
        "Devices": [{"PathOnHost": d} for d in o.device],
        "Links": o.link,
        "VolumesFrom": o.volumes_from,
    }
    return ({k: v for k, v in config.items() if v},
            {k: v for k, v in host.items() if v})


def _cpus(value: str | None) -> int:
    if value is None:
        return 0
    try:
        return round(float(value) * 1e9)
    except ValueError:
        raise _UsageError(
            f"invalid --cpus {value!r}: give a number of CPUs, for example 0.5"
        ) from None


def _restart_policy(value: str) -> dict:
    name, _, count = value.partition(":")
    if count and not count.removeprefix("-").isdecimal():
        raise _UsageError(f"invalid --restart {value!r}: the count must be a number")
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def _duration_ns(value: str | None, flag: str) -> int | None:
    from .units import parse_duration_s

    if value is None:
        return None
    try:
        return round(parse_duration_s(value) * 1e9)
    except ValueError as err:
        raise _UsageError(f"invalid {flag}: {err}") from None


def _pressure_extensions(o) -> dict:
    """corral's HostConfig extensions for pressure events and actions."""
    out = {}
    if not (o.pressure_threshold or o.pressure_action):
        return out
    # Loaded only when asked for: its dataclasses cost some 10 ms of start-up.
    from . import pressure
    from .units import parse_duration_s

    try:
        if o.pressure_threshold:
            thresholds = {}
            for spec in o.pressure_threshold:
                given = pressure.parse_thresholds(spec)
                thresholds.update({r: given[r] for r in _named_resources(spec)})
            out["CorralPressureThresholds"] = thresholds
        if o.pressure_action:
            out["CorralPressureActions"] = [
                pressure.parse_action(spec, parse_duration_s).to_host_config()
                for spec in o.pressure_action
            ]
    except ValueError as err:
        raise _UsageError(str(err)) from None
    return out


def _named_resources(spec: str) -> list[str]:
    return [item.partition("=")[0].strip() for item in spec.split(",")]


def _restart_extensions(o) -> dict:
    """corral's HostConfig extensions for restart backoff and start limit."""
    backoff = {
        "InitialDelay": _duration_ns(o.restart_delay, "--restart-delay"),
        "MaxDelay": _duration_ns(o.restart_max_delay, "--restart-max-delay"),
        "ResetAfter": _duration_ns(o.restart_reset_after, "--restart-reset-after"),
        "Factor": o.restart_factor,
        "Jitter": o.restart_jitter,
    }
    out = {}
    backoff = {k: v for k, v in backoff.items() if v is not None}
    if backoff:
        out["CorralRestartBackoff"] = backoff
    if o.start_limit:
        burst, sep, interval = o.start_limit.partition("/")
        if not sep or not burst.isdigit():
            raise _UsageError(
                f"invalid --start-limit {o.start_limit!r}: use BURST/INTERVAL, "
                "for example 5/30s"
            )
        out["CorralStartLimit"] = {
            "Burst": int(burst),
            "Interval": _duration_ns(interval, "--start-limit interval"),
        }
    return out


def _healthcheck(o) -> dict | None:
    if o.no_healthcheck:
        return {"Test": ["NONE"]}
    timings = {
        "Interval": _duration_ns(o.health_interval, "--health-interval"),
        "Timeout": _duration_ns(o.health_timeout, "--health-timeout"),
        "StartPeriod": _duration_ns(o.health_start_period, "--health-start-period"),
        "StartInterval": _duration_ns(
            o.health_start_interval, "--health-start-interval"
        ),
    }
    doc = {k: v for k, v in timings.items() if v is not None}
    if o.health_retries is not None:
        doc["Retries"] = o.health_retries
    if o.health_cmd:
        doc["Test"] = ["CMD-SHELL", o.health_cmd]
    return doc or None


def _key_values(items, flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"invalid {flag} {item!r}: use key=value")
        out[key] = value
    return out


def _env(env, env_files) -> list[str]:
    out = []
    for path in env_files:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError as err:
            raise _UsageError(
                f"cannot read --env-file {path!r}: {err.strerror}"
            ) from None
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(
                    line if "=" in line else f"{line}={os.environ.get(line, '')}"
                )
    for item in env:
        out.append(item if "=" in item else f"{item}={os.environ.get(item, '')}")
    return out


def _create_body(o) -> dict:
    restart_name = o.restart.partition(":")[0]
    # An unknown policy name is the daemon's to explain; the conflict with
    # --rm only matters for a real policy. (supervisor.policy, with its
    # dataclasses, costs some 10 ms of start-up: loaded only when needed.)
    if o.auto_remove and restart_name != "no" and _is_policy(restart_name):
        raise _UsageError(
            "conflicting options: cannot use --rm together with --restart "
            f"{o.restart}; a removed container cannot be restarted"
        )
    host = {
        "NetworkMode": o.network,
        "RestartPolicy": _restart_policy(o.restart),
        "AutoRemove": o.auto_remove,
        "Init": o.use_init,
        "Memory": _size(o.memory, "--memory"),
        "MemorySwap": _size(o.memory_swap, "--memory-swap"),
        "NanoCpus": _cpus(o.cpus),
        "PidsLimit": o.pids_limit,
        "LogConfig": {
            "Type": "json-file",
            "Config": _key_values(o.log_opt, "--log-opt"),
        },
    }
    host.update(_restart_extensions(o))
    host.update(_pressure_extensions(o))
    host["CorralHealthOnFailure"] = o.health_on_failure
    if o.oom_kill_group:
        host["CorralOomKillGroup"] = True
    body = {
        "Image": o.image,
        "Cmd": list(o.command) or None,
        "Env": _env(o.env, o.env_file),
        "WorkingDir": o.workdir or "",
        "User": o.user or "",
        "Hostname": o.hostname or "",
        "Labels": _key_values(o.label, "--label"),
        "StopSignal": o.stop_signal,
        "StopTimeout": o.stop_timeout,
        "HostConfig": host,
    }
    refused_config, refused_host = _refused_fields(o)
    body.update(refused_config)
    host.update(refused_host)
    healthcheck = _healthcheck(o)
    if healthcheck:
        body["Healthcheck"] = healthcheck
    if o.entrypoint is not None:
        body["Entrypoint"] = [o.entrypoint] if o.entrypoint else []
    return body


def _is_policy(name: str) -> bool:
    from .policy import POLICY_NAMES

    return name in POLICY_NAMES


def _create(client: Client, o) -> str:
    """The new container's id; a refusal, ours or the daemon's, exits 125."""
    try:
        body = _create_body(o)
    except _UsageError as err:
        _echo(f"corral: {err}", err=True)
        sys.exit(EXIT_DAEMON_REFUSED)
    try:
        doc = client.call("POST", "/containers/create", {"name": o.name}, body)
    except ClientError as err:
        _fail(err, EXIT_DAEMON_REFUSED)
    return doc["Id"]


@_command("[OPTIONS] IMAGE [COMMAND]...", _run_arguments, passthrough=True)
def run(client: Client, o) -> int:
    """Create and start a container."""
    container_id = _create(client, o)
    if o.detach:
        _start_or_fail(client, container_id, o.auto_remove)
        _echo(container_id)
        return 0
    # Attach and wait are in place before the start, so no output and no
    # exit can slip past, however short the run. The wait's answer comes
    # when the container has exited, and is read once its output has ended.
    output = client.open(
        "POST",
        f"/containers/{container_id}/attach",
        {"stream": 1, "stdout": 1, "stderr": 1},
    )
    waiter = _open_wait(
        client, container_id, "removed" if o.auto_remove else "next-exit"
    )
    _start_or_fail(client, container_id, o.auto_remove)
    _proxy_signals(client, container_id)
    _copy_frames(output)
    return _wait_result(waiter)


# As docker run does without a TTY: signals the attached CLI gets go to the
# container, and the CLI goes on showing its output until it exits.
_PROXIED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def _proxy_signals(client: Client, container_id: str) -> None:
    import signal

    def forward(signum, frame):
        try:
            client.call("POST", f"/containers/{container_id}/kill", {"signal": signum})
        except ClientError as err:
            if err.status == 409:
                return  # it has just stopped: its output and exit code follow
            if signum == signal.SIGINT:
                raise KeyboardInterrupt from None  # corrald is gone: give up
        except OSError:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt from None

    for name in _PROXIED_SIGNALS:
        signal.signal(getattr(signal, name), forward)


def _open_wait(client: Client, container_id: str, condition: str):
    try:
        return client.open(
            "POST", f"/containers/{container_id}/wait", {"condition": condition}
        )
    except (ClientError, OSError):
        return None


def _wait_result(response) -> int:
    """The exit code a wait reply carries; 125 when there is none."""
    import json

    if response is None:
        return EXIT_DAEMON_REFUSED
    try:
        return json.loads(response.read())["StatusCode"]
    except (ClientError, ValueError, KeyError, TypeError, OSError):
        return EXIT_DAEMON_REFUSED


def _start_or_fail(client: Client, container_id: str, auto_remove: bool) -> None:
    try:
        client.call("POST", f"/containers/{container_id}/start")
    except ClientError as err:
        code = EXIT_DAEMON_REFUSED
        try:
            state = client.call("GET", f"/containers/{container_id}/json")["State"]
            if state["ExitCode"] in (126, 127):
                code = state["ExitCode"]
        except ClientError:
            # An --rm container is already gone: judge by the message, as
            # the docker CLI does.
            code = _exit_code_of_start_error(err.message)
        if auto_remove:
            try:
                client.call("DELETE", f"/containers/{container_id}", {"force": 1})
            except ClientError:
                pass
        _fail(err, code)


def _exit_code_of_start_error(message: str) -> int:
    if "no such file or directory" in message or "executable file not found" in message:
        return 127
    if "permission denied" in message or "is a directory" in message:
        return 126
    return EXIT_DAEMON_REFUSED


@_command("[OPTIONS] IMAGE [COMMAND]...", _create_arguments, passthrough=True)
def create(client: Client, o) -> int:
    """Create a container without starting it."""
    _echo(_create(client, o))
    return 0


# ---- lifecycle ---------------------------------------------------------------


def _containers_argument(p) -> None:
    p.add_argument(
        "containers", nargs="+", metavar="CONTAINERS", help=argparse.SUPPRESS
    )


def _timeout_arguments(p) -> None:
    p.add_argument(
        "-t",
        "--time",
        dest="timeout",
        metavar="SECONDS",
        type=int,
        help="seconds to wait before SIGKILL",
    )
    _containers_argument(p)


def _each(containers, action) -> int:
    failed = False
    for ref in containers:
        try:
            action(ref)
            _echo(ref)
        except ClientError as err:
            _say_error(err)
            failed = True
    return 1 if failed else 0


def _start_arguments(p) -> None:
    _flag(p, "-a", "--attach", help="stream the output and exit with the exit code")
    _containers_argument(p)


@_command("[OPTIONS] CONTAINERS...", _start_arguments)
def start(client: Client, o) -> int:
    """Start one or more stopped containers."""
    if not o.attach:
        return _each(
            o.containers, lambda ref: client.call("POST", f"/containers/{ref}/start")
        )
    if len(o.containers) > 1:
        raise _UsageError("you cannot start and attach multiple containers at once")
    try:
        container_id = client.call("GET", f"/containers/{o.containers[0]}/json")["Id"]
    except ClientError as err:
        _fail(err, 1)
    # As for run: attach and wait first, so nothing of a short run is missed.
    output = client.open(
        "POST", f"/containers/{container_id}/attach",
        {"stream": 1, "stdout": 1, "stderr": 1},
    )
    waiter = _open_wait(client, container_id, "next-exit")
    try:
        client.call("POST", f"/containers/{container_id}/start")
    except ClientError as err:
        _fail(err, 1)
    _proxy_signals(client, container_id)
    _copy_frames(output)
    return _wait_result(waiter)


@_command("[OPTIONS] CONTAINERS...", _timeout_arguments)
def stop(client: Client, o) -> int:
    """Stop one or more running containers."""
    return _each(
        o.containers,
        lambda ref: client.call("POST", f"/containers/{ref}/stop", {"t": o.timeout}),
    )


@_command("[OPTIONS] CONTAINERS...", _timeout_arguments)
def restart(client: Client, o) -> int:
    """Restart one or more containers."""
    return _each(
        o.containers,
        lambda ref: client.call("POST", f"/containers/{ref}/restart", {"t": o.timeout}),
    )


def _kill_arguments(p) -> None:
    p.add_argument(
        "-s",
        "--signal",
        dest="sig",
        metavar="SIGNAL",
        default="KILL",
        help="signal to send  [default: KILL]",
    )
    _containers_argument(p)


@_command("[OPTIONS] CONTAINERS...", _kill_arguments)
def kill(client: Client, o) -> int:
    """Send a signal to one or more running containers."""
    return _each(
        o.containers,
        lambda ref: client.call("POST", f"/containers/{ref}/kill", {"signal": o.sig}),
    )


def _rm_arguments(p) -> None:
    _flag(p, "-f", "--force", help="kill and remove a running container")
    _containers_argument(p)


@_command("[OPTIONS] CONTAINERS...", _rm_arguments)
def rm(client: Client, o) -> int:
    """Remove one or more containers."""
    return _each(
        o.containers,
        lambda ref: client.call(
            "DELETE", f"/containers/{ref}", {"force": int(o.force)}
        ),
    )


@_command("[OPTIONS] CONTAINERS...", _containers_argument)
def wait(client: Client, o) -> int:
    """Block until containers stop, then print their exit codes."""
    failed = False
    for ref in o.containers:
        try:
            _echo(client.call("POST", f"/containers/{ref}/wait")["StatusCode"])
        except ClientError as err:
            _say_error(err)
            failed = True
    return 1 if failed else 0


def _exec_arguments(p) -> None:
    _flag(p, "-d", "--detach", help="run the command in the background")
    _repeated(
        p, "-e", "--env", metavar="KEY[=VALUE]", help="set an environment variable"
    )
    p.add_argument("-u", "--user", help="user[:group] to run as")
    p.add_argument(
        "-w", "--workdir", metavar="DIR", help="working directory inside the container"
    )
    p.add_argument("container", metavar="CONTAINER", help=argparse.SUPPRESS)
    _command_argument(p)


@_command(
    "[OPTIONS] CONTAINER COMMAND...", _exec_arguments, name="exec", passthrough=True
)
def exec_(client: Client, o) -> int:
    """Run a command in a running container."""
    if not o.command:
        raise _UsageError("the following arguments are required: COMMAND")
    body = {
        "Cmd": o.command,
        "Env": _env(o.env, ()),
        "User": o.user or "",
        "WorkingDir": o.workdir or "",
        "AttachStdout": not o.detach,
        "AttachStderr": not o.detach,
    }
    try:
        exec_id = client.call("POST", f"/containers/{o.container}/exec", body=body)[
            "Id"
        ]
        response = client.open(
            "POST", f"/exec/{exec_id}/start", body={"Detach": o.detach, "Tty": False}
        )
        if o.detach:
            response.read()
            return 0
        _copy_frames(response)
        doc = client.call("GET", f"/exec/{exec_id}/json")
    except ClientError as err:
        _fail(err, EXIT_DAEMON_REFUSED)
    return doc["ExitCode"] if doc["ExitCode"] is not None else EXIT_DAEMON_REFUSED


# ---- ps, logs, inspect -------------------------------------------------------


def _ps_arguments(p) -> None:
    _flag(p, "-a", "--all", dest="show_all", help="show stopped containers too")
    _flag(p, "-q", "--quiet", help="only print ids")
    _repeated(
        p,
        "-f",
        "--filter",
        dest="filters",
        metavar="KEY=VALUE",
        help="key=value: id, name, status, label, exited, ancestor",
    )
    _flag(p, "--no-trunc", help="do not truncate output")
    p.add_argument(
        "--format",
        dest="fmt",
        metavar="TEMPLATE",
        help="'{{.Field}}' template, or json",
    )


@_command("[OPTIONS]", _ps_arguments)
def ps(client: Client, o) -> int:
    """List containers."""
    query = {"all": int(o.show_all)}
    filters = _filters(o.filters, strict=True)
    if filters:
        import json

        query["filters"] = json.dumps(filters)
    containers = client.call("GET", "/containers/json", query)
    if o.quiet:
        for c in containers:
            _echo(c["Id"] if o.no_trunc else c["Id"][:12])
        return 0
    if o.fmt:
        for c in containers:
            _echo(_render(o.fmt, _ps_fields(c, o.no_trunc)))
        return 0
    import json

    rows = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")]
    for c in containers:
        command = c["Command"] if o.no_trunc else _truncate(c["Command"], 20)
        rows.append(
            (
                c["Id"] if o.no_trunc else c["Id"][:12],
                c["Image"],
                # Quoted with escapes, as docker does: a command holding a
                # newline or tab stays on its row.
                json.dumps(command, ensure_ascii=False),
                _ago(c["Created"]),
                c["Status"],
                "",
                ",".join(n.lstrip("/") for n in c["Names"]),
            )
        )
    _table(rows)
    return 0


def _ps_fields(c: dict, no_trunc: bool) -> dict:
    """What `ps --format` templates see: docker's field names and values."""
    import json
    import time

    command = c["Command"] if no_trunc else _truncate(c["Command"], 20)
    labels = c.get("Labels") or {}
    return {
        "ID": c["Id"] if no_trunc else c["Id"][:12],
        "Image": c["Image"],
        "Command": json.dumps(command, ensure_ascii=False),
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC",
                                   time.gmtime(c["Created"])),
        "RunningFor": _ago(c["Created"]),
        "Ports": "",
        "State": c["State"],
        "Status": c["Status"],
        "Size": "",
        "Names": ",".join(n.lstrip("/") for n in c["Names"]),
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "Mounts": "",
        "Networks": ",".join(c.get("NetworkSettings", {}).get("Networks") or {}),
    }


def _filters(items, strict: bool) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if strict and not sep:
            raise _UsageError(f"invalid filter {item!r}: use key=value")
        filters.setdefault(key, []).append(value)
    return filters


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _ago(unix_s: int) -> str:
    import time

    from .status import human_duration

    return human_duration(max(0.0, time.time() - unix_s)) + " ago"


def _table(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [str(cell).ljust(w) for cell, w in zip(row, widths)]
        _echo("   ".join(cells).rstrip())


def _render(template: str, doc) -> str:
    """A subset of Go templates: {{.A.B}} and {{json .A.B}}."""
    import json
    import re

    if template == "json":
        return json.dumps(doc)

    def value(match):
        current = doc
        for part in filter(None, match.group(2).split(".")):
            current = _field(current, part)
        if match.group(1):
            return json.dumps(current)
        if isinstance(current, bool):
            return str(current).lower()
        if current is None:
            return "<no value>"
        return (
            json.dumps(current) if isinstance(current, (dict, list)) else str(current)
        )

    # \t and \n are the template's own escapes, as in docker's formats; the
    # values are printed as they are, so {{json ...}} stays valid JSON.
    template = template.replace("\\t", "\t").replace("\\n", "\n")
    pattern = r"\{\{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*\}\}"
    if "{{" in re.sub(pattern, "", template) or "}}" in re.sub(pattern, "", template):
        raise _UsageError(
            f"cannot parse the template {template!r}: corral understands "
            "{{.Field.Sub}} and {{json .Field}}"
        )
    return re.sub(pattern, value, template)


def _field(doc, name: str):
    """A field by its Go name; Docker's JSON spells some in lower case."""
    if not isinstance(doc, dict):
        return None
    for key in (name, name[:1].lower() + name[1:], name.lower()):
        if key in doc:
            return doc[key]
    return None


def _logs_arguments(p) -> None:
    _flag(p, "-f", "--follow", help="follow new output")
    p.add_argument(
        "-n",
        "--tail",
        metavar="N",
        default="all",
        help="lines to show from the end  [default: all]",
    )
    _flag(p, "-t", "--timestamps", help="show time stamps")
    p.add_argument("--since", metavar="TIME", help="show lines since a Unix time stamp")
    p.add_argument("container", metavar="CONTAINER", help=argparse.SUPPRESS)


@_command("[OPTIONS] CONTAINER", _logs_arguments)
def logs(client: Client, o) -> int:
    """Show a container's output."""
    query = {
        "stdout": 1,
        "stderr": 1,
        "follow": int(o.follow),
        "tail": o.tail,
        "timestamps": int(o.timestamps),
        "since": o.since,
    }
    _copy_frames(client.open("GET", f"/containers/{o.container}/logs", query))
    return 0


def _top_arguments(p) -> None:
    p.add_argument("container", metavar="CONTAINER", help=argparse.SUPPRESS)
    ps_options = p.add_argument(
        "ps_options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS
    )
    # None given means the daemon's default, -ef.
    ps_options.required = False


@_command("CONTAINER [ps OPTIONS]", _top_arguments, passthrough=True)
def top(client: Client, o) -> int:
    """Show a running container's processes, as the host's ps lists them."""
    # Joined with spaces, as docker does: the daemon splits them again.
    query = {"ps_args": " ".join(o.ps_options) or None}
    doc = client.call("GET", f"/containers/{o.container}/top", query)
    _table([doc["Titles"], *doc["Processes"]])
    return 0


def _stats_arguments(p) -> None:
    _flag(p, "--no-stream", help="show one sample and exit")
    p.add_argument(
        "--format", dest="fmt", metavar="FORMAT",
        help="json (one object per container and sample) or a '{{.Field}}' template",
    )
    p.add_argument("containers", nargs="*", metavar="CONTAINER",
                   help=argparse.SUPPRESS)


@_command("[OPTIONS] [CONTAINER...]", _stats_arguments)
def stats(client: Client, o) -> int:
    """Show the containers' resource use, refreshed each second."""
    import time

    from .status import cpu_percent, memory_used_bytes

    try:
        while True:
            docs = client.call("GET", "/stats")
            if o.containers:
                docs = [d for d in docs if _stats_matches(d, o.containers)]
                # GET /stats lists running containers; one that is not
                # running gets its row of zeros, an unknown one the 404.
                docs += [client.call("GET", f"/containers/{ref}/stats", {"stream": 0})
                         for ref in o.containers
                         if not any(_stats_matches(d, [ref]) for d in docs)]
            if o.fmt:
                for doc in docs:
                    if o.fmt.strip() != "json":
                        # Docker's template fields beside the API document's.
                        row = _stats_row(doc, cpu_percent(doc), memory_used_bytes(doc))
                        doc = {**doc, **dict(zip(_STATS_FIELDS, row))}
                    _echo(_render(o.fmt, doc))
            else:
                if not o.no_stream:
                    sys.stdout.write("\033[2J\033[H")
                _table([_STATS_TITLES] + [
                    _stats_row(d, cpu_percent(d), memory_used_bytes(d)) for d in docs])
            if o.no_stream:
                return 0
            time.sleep(1)
    except KeyboardInterrupt:
        return 130


_STATS_TITLES = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %",
                 "NET I/O", "BLOCK I/O", "PIDS", "RESTARTS", "HEALTH"]
# The names Docker's `stats --format` templates use for the same columns.
_STATS_FIELDS = ["ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO",
                 "PIDs", "Restarts", "Health"]


def _stats_matches(doc: dict, refs) -> bool:
    name = doc["name"].lstrip("/")
    return any(ref == name or (ref and doc["id"].startswith(ref)) for ref in refs)


def _stats_row(doc: dict, cpu: float, used: int) -> list[str]:
    limit = doc["memory_stats"].get("limit", 0)
    nets = doc.get("networks") or {}
    rx = sum(n["rx_bytes"] for n in nets.values())
    tx = sum(n["tx_bytes"] for n in nets.values())
    entries = doc["blkio_stats"].get("io_service_bytes_recursive") or []
    read = sum(e["value"] for e in entries if e["op"].lower() == "read")
    write = sum(e["value"] for e in entries if e["op"].lower() == "write")
    return [
        doc["id"][:12], doc["name"].lstrip("/"), f"{cpu:.2f}%",
        f"{_binary_size(used)} / {_binary_size(limit)}",
        f"{100 * used / limit:.2f}%" if limit else "0.00%",
        f"{_decimal_size(rx)} / {_decimal_size(tx)}",
        f"{_decimal_size(read)} / {_decimal_size(write)}",
        str(doc["pids_stats"].get("current", 0)),
        str(doc.get("corral_restart_count", 0)), doc.get("corral_health") or "-",
    ]


def _binary_size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.4g}{unit}"
        count /= 1024
    return ""


def _decimal_size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.3g}{unit}"
        count /= 1000
    return ""


def _copy_frames(response) -> None:
    outputs = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    try:
        for stream, data in read_frames(response):
            out = outputs.get(stream, sys.stdout.buffer)
            out.write(data)
            out.flush()
    except KeyboardInterrupt:
        sys.exit(130)


def _inspect_arguments(p) -> None:
    p.add_argument(
        "-f", "--format", dest="fmt", metavar="TEMPLATE", help="'{{.Field}}' template"
    )
    p.add_argument(
        "--type",
        dest="kind",
        metavar="KIND",
        choices=["container", "image"],
        help="only look for this kind of object: container or image",
    )
    p.add_argument("objects", nargs="+", metavar="OBJECTS", help=argparse.SUPPRESS)


@_command("[OPTIONS] OBJECTS...", _inspect_arguments)
def inspect(client: Client, o) -> int:
    """Show the full record of containers or images as JSON."""
    found, failed = [], False
    for ref in o.objects:
        doc = _inspect_one(client, ref, o.kind)
        if doc is None:
            _echo(f"Error: No such object: {ref}", err=True)
            failed = True
        else:
            found.append(doc)
    if o.fmt:
        for doc in found:
            _echo(_render(o.fmt, doc))
    else:
        import json

        _echo(json.dumps(found, indent=4))
    return 1 if failed else 0


def _inspect_one(client: Client, ref: str, kind: str | None):
    paths = {"container": f"/containers/{ref}/json", "image": f"/images/{ref}/json"}
    for name in [kind] if kind else ["container", "image"]:
        try:
            return client.call("GET", paths[name])
        except ClientError as err:
            if err.status != 404:
                raise
    return None


# ---- images ------------------------------------------------------------------


def _quiet_argument(p) -> None:
    _flag(p, "-q", "--quiet", help="only print ids")


@_command("[OPTIONS]", _quiet_argument)
def images(client: Client, o) -> int:
    """List images."""
    from .units import format_size

    found = client.call("GET", "/images/json")
    if o.quiet:
        for image in found:
            _echo(image["Id"].split(":", 1)[1][:12])
        return 0
    rows = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    for image in found:
        short_id = image["Id"].split(":", 1)[1][:12]
        created = _ago(image["Created"]) if image["Created"] else "N/A"
        for tag in image["RepoTags"] or ["<none>:<none>"]:
            repo, _, name = tag.rpartition(":")
            rows.append((repo, name, short_id, created, format_size(image["Size"])))
    _table(rows)
    return 0


def _load_arguments(p) -> None:
    p.add_argument(
        "-i",
        "--input",
        dest="path",
        metavar="FILE",
        required=True,
        type=_existing_file,
        help="image tarball (docker-archive or OCI layout)",
    )
    _flag(p, "-q", "--quiet", help="print nothing on success")


@_command("[OPTIONS]", _load_arguments)
def load(client: Client, o) -> int:
    """Load an image from a tarball."""
    import json

    size = os.path.getsize(o.path)
    with open(o.path, "rb") as f:
        response = client.open(
            "POST",
            "/images/load",
            {"quiet": 0},
            body=f,
            headers={"Content-Type": "application/x-tar", "Content-Length": str(size)},
        )
        data = response.read()
    if o.quiet:
        return 0
    for line in data.splitlines():
        if line.strip():
            _echo(json.loads(line).get("stream", "").rstrip("\n"))
    return 0


def _rmi_arguments(p) -> None:
    _flag(p, "-f", "--force", help="accepted for docker compatibility")
    p.add_argument("images", nargs="+", metavar="IMAGES", help=argparse.SUPPRESS)


@_command("[OPTIONS] IMAGES...", _rmi_arguments)
def rmi(client: Client, o) -> int:
    """Remove one or more images."""
    failed = False
    for ref in o.images:
        try:
            for item in client.call(
                "DELETE", f"/images/{ref}", {"force": int(o.force)}
            ):
                for key, value in item.items():
                    _echo(f"{key}: {value}")
        except ClientError as err:
            _say_error(err)
            failed = True
    return 1 if failed else 0


# ---- system ------------------------------------------------------------------


@_command("[OPTIONS]")
def version(client: Client, o) -> int:
    """Show the client and daemon versions."""
    from . import API_VERSION, __version__

    _echo(f"Client:\n Version:     {__version__}\n API version: {API_VERSION}\n")
    doc = client.call("GET", "/version")
    _echo(
        f"Server: corral\n Engine:\n  Version:     {doc['Version']}\n"
        f"  API version: {doc['ApiVersion']} (minimum version {doc['MinAPIVersion']})\n"
        f"  OS/Arch:     {doc['Os']}/{doc['Arch']}\n"
        f"  Kernel:      {doc['KernelVersion']}"
    )
    return 0


def _info_arguments(p) -> None:
    p.add_argument(
        "-f", "--format", dest="fmt", metavar="TEMPLATE", help="'{{.Field}}' template"
    )


@_command("[OPTIONS]", _info_arguments)
def info(client: Client, o) -> int:
    """Show daemon-wide information."""
    doc = client.call("GET", "/info")
    if o.fmt:
        _echo(_render(o.fmt, doc))
        return 0
    lines = [
        ("Containers", doc["Containers"]),
        (" Running", doc["ContainersRunning"]),
        (" Stopped", doc["ContainersStopped"]),
        ("Images", doc["Images"]),
        ("Server Version", doc["ServerVersion"]),
        ("Storage Driver", doc["Driver"]),
        ("Logging Driver", doc["LoggingDriver"]),
        ("Cgroup Layout", doc.get("CorralCgroupLayout", doc["CgroupVersion"])),
        ("Kernel Version", doc["KernelVersion"]),
        ("Operating System", doc["OperatingSystem"]),
        ("CPUs", doc["NCPU"]),
        ("Total Memory", f"{doc['MemTotal'] / (1 << 30):.2f}GiB"),
        ("Root Dir", doc["DockerRootDir"]),
    ]
    for key, value in lines:
        _echo(f"{key}: {value}")
    return 0


def _events_arguments(p) -> None:
    p.add_argument(
        "--since", metavar="TIME", help="start at a Unix time, RFC 3339 time or 10m ago"
    )
    p.add_argument(
        "--until", metavar="TIME", help="stop at a Unix time, RFC 3339 time or 1m ago"
    )
    _repeated(
        p, "-f", "--filter", dest="filters", metavar="KEY=VALUE", help="key=value"
    )
    p.add_argument(
        "--format",
        dest="fmt",
        metavar="TEMPLATE",
        help="'{{.Field}}' template, or json",
    )


def _relative_time(value: str | None) -> str | None:
    """A duration such as 10m means that long ago, as docker's CLI reads it;
    anything else goes to the daemon as it is."""
    import time

    from .units import parse_duration_s

    if not value or value.replace(".", "", 1).isdigit():
        return value
    try:
        return f"{time.time() - parse_duration_s(value):.9f}"
    except ValueError:
        return value


@_command("[OPTIONS]", _events_arguments)
def events(client: Client, o) -> int:
    """Stream the daemon's events."""
    import json
    import time

    filters = _filters(o.filters, strict=False)
    query = {
        "since": _relative_time(o.since),
        "until": _relative_time(o.until),
        "filters": json.dumps(filters) if filters else None,
    }
    response = client.open("GET", "/events", query)
    try:
        for line in response:
            event = json.loads(line)
            if o.fmt:
                _echo(_render(o.fmt, event))
            else:
                attrs = ", ".join(
                    f"{k}={v}" for k, v in event["Actor"]["Attributes"].items()
                )
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event["time"]))
                _echo(
                    f"{stamp} {event['Type']} {event['Action']} {event['id']} ({attrs})"
                )
    except KeyboardInterrupt:
        sys.exit(130)
    return 0
