"""corral: the command-line client. It holds no state and only speaks HTTP.

Output and exit codes follow docker's: `run` exits with the container's exit
code, 125 when the daemon refuses, 126/127 when the command cannot be run.
"""

import json
import os
import re
import sys
import threading
import time

import click

from .client import Client, ClientError, read_frames

EXIT_DAEMON_REFUSED = 125


def _client(ctx: click.Context) -> Client:
    return ctx.find_root().obj


def _say_error(err: ClientError) -> None:
    click.echo(f"Error response from daemon: {err.message}" if err.status else err.message,
               err=True)


def _fail(err: ClientError, code: int = 1):
    _say_error(err)
    sys.exit(code)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClientError as err:
            _fail(err)


@click.group(cls=_Group, context_settings={"help_option_names": ["--help"]})
@click.option("-H", "--host", envvar="CORRAL_HOST",
              help="daemon socket, unix:///path [env CORRAL_HOST; "
                   "default unix:///run/corral/corral.sock]")
@click.pass_context
def main(ctx: click.Context, host: str | None) -> None:
    """corral: run Linux containers and keep them running."""
    try:
        ctx.obj = Client(host)
    except ClientError as err:
        _fail(err)


# ---- run and create ----------------------------------------------------------

_RUN_ARGS = {"allow_interspersed_args": False, "help_option_names": ["--help"]}


def _create_options(f):
    options = [
        click.option("--name", help="container name"),
        click.option("-e", "--env", multiple=True, help="set an environment variable"),
        click.option("--env-file", multiple=True, type=click.Path(dir_okay=False),
                     help="read environment variables from a file"),
        click.option("-w", "--workdir", help="working directory inside the container"),
        click.option("-u", "--user", help="user[:group] to run as"),
        click.option("-h", "--hostname", help="container host name"),
        click.option("--entrypoint", help="override the image's entrypoint"),
        click.option("-m", "--memory", help="memory limit (for example 64m)"),
        click.option("--memory-swap", help="memory plus swap limit; -1 for unlimited swap"),
        click.option("--cpus", type=float, help="number of CPUs (for example 0.5)"),
        click.option("--pids-limit", type=int, help="maximum number of processes"),
        click.option("--network", default="none", show_default=True,
                     help="none (own namespace, loopback only) or host"),
        click.option("--restart", default="no", show_default=True,
                     help="no, on-failure[:N], always or unless-stopped"),
        click.option("--restart-delay", help="first restart delay (default 100ms)"),
        click.option("--restart-max-delay", help="cap of the restart delay (default 1m)"),
        click.option("--restart-reset-after",
                     help="a run this long resets the delay (default 10s)"),
        click.option("--restart-factor", type=float,
                     help="delay multiplier per consecutive restart (default 2)"),
        click.option("--restart-jitter", type=float,
                     help="random spread of each delay, a fraction in [0, 1)"),
        click.option("--start-limit", help="B/T: give up after B restarts within T "
                     "(for example 5/30s)"),
        click.option("--health-cmd", help="command to check health (run by /bin/sh -c)"),
        click.option("--health-interval", help="time between checks (default 30s)"),
        click.option("--health-timeout", help="time a check may take (default 30s)"),
        click.option("--health-retries", type=int,
                     help="failures in a row that make it unhealthy (default 3)"),
        click.option("--health-start-period", help="grace time after start (default 0s)"),
        click.option("--health-start-interval",
                     help="time between checks in the start period (default 5s)"),
        click.option("--no-healthcheck", is_flag=True, help="disable the image's check"),
        click.option("--health-on-failure", default="none", show_default=True,
                     type=click.Choice(["none", "restart", "stop", "kill"]),
                     help="what to do when the container turns unhealthy"),
        click.option("--init", "use_init", is_flag=True,
                     help="run an init as PID 1 that forwards signals and reaps zombies"),
        click.option("--rm", "auto_remove", is_flag=True,
                     help="remove the container when it exits"),
        click.option("--stop-signal", help="signal that stops the container"),
        click.option("--stop-timeout", type=int, help="seconds to wait before SIGKILL"),
        click.option("-l", "--label", multiple=True, help="set a label key=value"),
        click.option("--log-opt", multiple=True, help="max-size=SIZE or max-file=N"),
        click.argument("image"),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _size(value: str | None, flag: str) -> int:
    from .units import parse_size

    if value is None:
        return 0
    if value.strip() == "-1":
        return -1
    try:
        return parse_size(value)
    except ValueError as err:
        raise click.UsageError(f"invalid {flag}: {err}") from None


def _restart_policy(value: str) -> dict:
    name, _, count = value.partition(":")
    if count and not re.fullmatch(r"-?\d+", count):
        raise click.UsageError(f"invalid --restart {value!r}: the count must be a number")
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def _duration_ns(value: str | None, flag: str) -> int | None:
    from .units import parse_duration_s

    if value is None:
        return None
    try:
        return int(round(parse_duration_s(value) * 1e9))
    except ValueError as err:
        raise click.UsageError(f"invalid {flag}: {err}") from None


def _restart_extensions(o: dict) -> dict:
    """corral's HostConfig extensions for restart backoff and start limit."""
    backoff = {
        "InitialDelay": _duration_ns(o["restart_delay"], "--restart-delay"),
        "MaxDelay": _duration_ns(o["restart_max_delay"], "--restart-max-delay"),
        "ResetAfter": _duration_ns(o["restart_reset_after"], "--restart-reset-after"),
        "Factor": o["restart_factor"],
        "Jitter": o["restart_jitter"],
    }
    out = {}
    backoff = {k: v for k, v in backoff.items() if v is not None}
    if backoff:
        out["CorralRestartBackoff"] = backoff
    if o["start_limit"]:
        burst, sep, interval = o["start_limit"].partition("/")
        if not sep or not burst.isdigit():
            raise click.UsageError(
                f"invalid --start-limit {o['start_limit']!r}: use BURST/INTERVAL, "
                "for example 5/30s"
            )
        out["CorralStartLimit"] = {
            "Burst": int(burst),
            "Interval": _duration_ns(interval, "--start-limit interval"),
        }
    return out


def _healthcheck(o: dict) -> dict | None:
    if o["no_healthcheck"]:
        return {"Test": ["NONE"]}
    timings = {
        "Interval": _duration_ns(o["health_interval"], "--health-interval"),
        "Timeout": _duration_ns(o["health_timeout"], "--health-timeout"),
        "StartPeriod": _duration_ns(o["health_start_period"], "--health-start-period"),
        "StartInterval": _duration_ns(o["health_start_interval"],
                                      "--health-start-interval"),
    }
    doc = {k: v for k, v in timings.items() if v is not None}
    if o["health_retries"] is not None:
        doc["Retries"] = o["health_retries"]
    if o["health_cmd"]:
        doc["Test"] = ["CMD-SHELL", o["health_cmd"]]
    elif doc:
        raise click.UsageError("health options need --health-cmd")
    return doc or None


def _key_values(items, flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"invalid {flag} {item!r}: use key=value")
        out[key] = value
    return out


def _env(env, env_files) -> list[str]:
    out = []
    for path in env_files:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    out.append(line if "=" in line else f"{line}={os.environ.get(line, '')}")
    for item in env:
        out.append(item if "=" in item else f"{item}={os.environ.get(item, '')}")
    return out


def _create_body(o: dict) -> dict:
    if o["auto_remove"] and o["restart"] not in ("no", ""):
        raise click.UsageError(
            "conflicting options: cannot use --rm together with --restart "
            f"{o['restart']}; a removed container cannot be restarted"
        )
    host = {
        "NetworkMode": o["network"],
        "RestartPolicy": _restart_policy(o["restart"]),
        "AutoRemove": o["auto_remove"],
        "Init": o["use_init"],
        "Memory": _size(o["memory"], "--memory"),
        "MemorySwap": _size(o["memory_swap"], "--memory-swap"),
        "NanoCpus": int(round(o["cpus"] * 1e9)) if o["cpus"] is not None else 0,
        "PidsLimit": o["pids_limit"],
        "LogConfig": {"Type": "json-file", "Config": _key_values(o["log_opt"], "--log-opt")},
    }
    host.update(_restart_extensions(o))
    host["CorralHealthOnFailure"] = o["health_on_failure"]
    body = {
        "Image": o["image"],
        "Cmd": list(o["command"]) or None,
        "Env": _env(o["env"], o["env_file"]),
        "WorkingDir": o["workdir"] or "",
        "User": o["user"] or "",
        "Hostname": o["hostname"] or "",
        "Labels": _key_values(o["label"], "--label"),
        "StopSignal": o["stop_signal"],
        "StopTimeout": o["stop_timeout"],
        "HostConfig": host,
    }
    healthcheck = _healthcheck(o)
    if healthcheck:
        body["Healthcheck"] = healthcheck
    if o["entrypoint"] is not None:
        body["Entrypoint"] = [o["entrypoint"]] if o["entrypoint"] else []
    return body


def _create(client: Client, options: dict) -> str:
    try:
        body = _create_body(options)
        doc = client.call("POST", "/containers/create", {"name": options["name"]}, body)
    except click.UsageError as err:
        click.echo(f"corral: {err.message}", err=True)
        sys.exit(EXIT_DAEMON_REFUSED)
    except ClientError as err:
        _fail(err, EXIT_DAEMON_REFUSED)
    return doc["Id"]


@main.command(context_settings=_RUN_ARGS)
@click.option("-d", "--detach", is_flag=True, help="run in the background, print the id")
@_create_options
@click.pass_context
def run(ctx, detach, **options):
    """Create and start a container."""
    client = _client(ctx)
    container_id = _create(client, options)
    if detach:
        _start_or_fail(client, container_id, options["auto_remove"])
        click.echo(container_id)
        return
    # Attach and wait are in place before the start, so no output and no
    # exit can slip past, however short the run.
    output = client.open("POST", f"/containers/{container_id}/attach",
                         {"stream": 1, "stdout": 1, "stderr": 1})
    condition = "removed" if options["auto_remove"] else "next-exit"
    waiter = _Waiter(client, container_id, condition)
    _start_or_fail(client, container_id, options["auto_remove"])
    _copy_frames(output)
    sys.exit(waiter.result())


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


class _Waiter:
    """Holds a wait request open from before the start until the exit."""

    def __init__(self, client: Client, container_id: str, condition: str):
        self._ready = threading.Event()
        self._code = EXIT_DAEMON_REFUSED
        self._thread = threading.Thread(
            target=self._wait, args=(client, container_id, condition), daemon=True
        )
        self._thread.start()
        self._ready.wait()

    def _wait(self, client, container_id, condition):
        try:
            response = client.open("POST", f"/containers/{container_id}/wait",
                                   {"condition": condition})
            self._ready.set()
            doc = json.loads(response.read())
            self._code = doc["StatusCode"]
        except (ClientError, ValueError, KeyError, OSError):
            pass
        finally:
            self._ready.set()

    def result(self) -> int:
        self._thread.join()
        return self._code


@main.command(context_settings=_RUN_ARGS)
@_create_options
@click.pass_context
def create(ctx, **options):
    """Create a container without starting it."""
    click.echo(_create(_client(ctx), options))


# ---- lifecycle ---------------------------------------------------------------


def _each(ctx, containers, action) -> None:
    failed = False
    for ref in containers:
        try:
            action(ref)
            click.echo(ref)
        except ClientError as err:
            _say_error(err)
            failed = True
    if failed:
        sys.exit(1)


@main.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def start(ctx, containers):
    """Start one or more stopped containers."""
    client = _client(ctx)
    _each(ctx, containers, lambda ref: client.call("POST", f"/containers/{ref}/start"))


@main.command()
@click.option("-t", "--time", "timeout", type=int, help="seconds to wait before SIGKILL")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def stop(ctx, timeout, containers):
    """Stop one or more running containers."""
    client = _client(ctx)
    _each(ctx, containers,
          lambda ref: client.call("POST", f"/containers/{ref}/stop", {"t": timeout}))


@main.command()
@click.option("-t", "--time", "timeout", type=int, help="seconds to wait before SIGKILL")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def restart(ctx, timeout, containers):
    """Restart one or more containers."""
    client = _client(ctx)
    _each(ctx, containers,
          lambda ref: client.call("POST", f"/containers/{ref}/restart", {"t": timeout}))


@main.command()
@click.option("-s", "--signal", "sig", default="KILL", show_default=True,
              help="signal to send")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def kill(ctx, sig, containers):
    """Send a signal to one or more running containers."""
    client = _client(ctx)
    _each(ctx, containers,
          lambda ref: client.call("POST", f"/containers/{ref}/kill", {"signal": sig}))


@main.command()
@click.option("-f", "--force", is_flag=True, help="kill and remove a running container")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def rm(ctx, force, containers):
    """Remove one or more containers."""
    client = _client(ctx)
    _each(ctx, containers,
          lambda ref: client.call("DELETE", f"/containers/{ref}", {"force": int(force)}))


@main.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def wait(ctx, containers):
    """Block until containers stop, then print their exit codes."""
    client = _client(ctx)

    def one(ref):
        doc = client.call("POST", f"/containers/{ref}/wait")
        click.echo(doc["StatusCode"])

    failed = False
    for ref in containers:
        try:
            one(ref)
        except ClientError as err:
            _say_error(err)
            failed = True
    sys.exit(1 if failed else 0)


@main.command(name="exec", context_settings=_RUN_ARGS)
@click.option("-d", "--detach", is_flag=True, help="run the command in the background")
@click.option("-e", "--env", multiple=True, help="set an environment variable")
@click.option("-u", "--user", help="user[:group] to run as")
@click.option("-w", "--workdir", help="working directory inside the container")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx, detach, env, user, workdir, container, command):
    """Run a command in a running container."""
    client = _client(ctx)
    body = {"Cmd": list(command), "Env": _env(env, ()), "User": user or "",
            "WorkingDir": workdir or "", "AttachStdout": not detach,
            "AttachStderr": not detach}
    try:
        exec_id = client.call("POST", f"/containers/{container}/exec", body=body)["Id"]
        response = client.open("POST", f"/exec/{exec_id}/start",
                               body={"Detach": detach, "Tty": False})
        if detach:
            response.read()
            return
        _copy_frames(response)
        doc = client.call("GET", f"/exec/{exec_id}/json")
    except ClientError as err:
        _fail(err, EXIT_DAEMON_REFUSED)
    sys.exit(doc["ExitCode"] if doc["ExitCode"] is not None else EXIT_DAEMON_REFUSED)


# ---- ps, logs, inspect -------------------------------------------------------


@main.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="show stopped containers too")
@click.option("-q", "--quiet", is_flag=True, help="only print ids")
@click.option("-f", "--filter", "filters", multiple=True,
              help="key=value: id, name, status, label, exited, ancestor")
@click.option("--no-trunc", is_flag=True, help="do not truncate output")
@click.option("--format", "fmt", help="'{{.Field}}' template, or json")
@click.pass_context
def ps(ctx, show_all, quiet, filters, no_trunc, fmt):
    """List containers."""
    query_filters: dict[str, list[str]] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"invalid filter {item!r}: use key=value")
        query_filters.setdefault(key, []).append(value)
    query = {"all": int(show_all)}
    if query_filters:
        query["filters"] = json.dumps(query_filters)
    containers = _client(ctx).call("GET", "/containers/json", query)
    if quiet:
        for c in containers:
            click.echo(c["Id"] if no_trunc else c["Id"][:12])
        return
    if fmt:
        for c in containers:
            click.echo(_render(fmt, c))
        return
    rows = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")]
    for c in containers:
        command = c["Command"] if no_trunc else _truncate(c["Command"], 20)
        rows.append((
            c["Id"] if no_trunc else c["Id"][:12],
            c["Image"],
            f'"{command}"',
            _ago(c["Created"]),
            c["Status"],
            "",
            ",".join(n.lstrip("/") for n in c["Names"]),
        ))
    _table(rows)


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _ago(unix_s: int) -> str:
    from .status import human_duration

    return human_duration(max(0.0, time.time() - unix_s)) + " ago"


def _table(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [str(cell).ljust(w) for cell, w in zip(row, widths)]
        click.echo("   ".join(cells).rstrip())


_TEMPLATE_FIELD = re.compile(r"\{\{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*\}\}")


def _render(template: str, doc) -> str:
    """A subset of Go templates: {{.A.B}} and {{json .A.B}}."""
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
        return json.dumps(current) if isinstance(current, (dict, list)) else str(current)

    # \t and \n are the template's own escapes, as in docker's formats; the
    # values are printed as they are, so {{json ...}} stays valid JSON.
    template = template.replace("\\t", "\t").replace("\\n", "\n")
    return _TEMPLATE_FIELD.sub(value, template)


def _field(doc, name: str):
    """A field by its Go name; Docker's JSON spells some in lower case."""
    if not isinstance(doc, dict):
        return None
    for key in (name, name[:1].lower() + name[1:], name.lower()):
        if key in doc:
            return doc[key]
    return None


@main.command()
@click.option("-f", "--follow", is_flag=True, help="follow new output")
@click.option("-n", "--tail", default="all", show_default=True,
              help="lines to show from the end")
@click.option("-t", "--timestamps", is_flag=True, help="show time stamps")
@click.option("--since", help="show lines since a Unix time stamp")
@click.argument("container")
@click.pass_context
def logs(ctx, follow, tail, timestamps, since, container):
    """Show a container's output."""
    query = {"follow": int(follow), "tail": tail, "timestamps": int(timestamps),
             "since": since}
    _stream_logs(_client(ctx), container, query)


def _stream_logs(client: Client, container: str, query: dict) -> None:
    query = {"stdout": 1, "stderr": 1, **query}
    _copy_frames(client.open("GET", f"/containers/{container}/logs", query))


def _copy_frames(response) -> None:
    outputs = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    try:
        for stream, data in read_frames(response):
            out = outputs.get(stream, sys.stdout.buffer)
            out.write(data)
            out.flush()
    except KeyboardInterrupt:
        sys.exit(130)


@main.command()
@click.option("-f", "--format", "fmt", help="'{{.Field}}' template")
@click.option("--type", "kind", type=click.Choice(["container", "image"]),
              help="only look for this kind of object")
@click.argument("objects", nargs=-1, required=True)
@click.pass_context
def inspect(ctx, fmt, kind, objects):
    """Show the full record of containers or images as JSON."""
    client = _client(ctx)
    found, failed = [], False
    for ref in objects:
        doc = _inspect_one(client, ref, kind)
        if doc is None:
            click.echo(f"Error: No such object: {ref}", err=True)
            failed = True
        else:
            found.append(doc)
    if fmt:
        for doc in found:
            click.echo(_render(fmt, doc))
    else:
        click.echo(json.dumps(found, indent=4))
    sys.exit(1 if failed else 0)


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


@main.command()
@click.option("-q", "--quiet", is_flag=True, help="only print ids")
@click.pass_context
def images(ctx, quiet):
    """List images."""
    from .units import format_size

    found = _client(ctx).call("GET", "/images/json")
    if quiet:
        for image in found:
            click.echo(image["Id"].split(":", 1)[1][:12])
        return
    rows = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    for image in found:
        short_id = image["Id"].split(":", 1)[1][:12]
        created = _ago(image["Created"]) if image["Created"] else "N/A"
        for tag in image["RepoTags"] or ["<none>:<none>"]:
            repo, _, name = tag.rpartition(":")
            rows.append((repo, name, short_id, created, format_size(image["Size"])))
    _table(rows)


@main.command()
@click.option("-i", "--input", "path", required=True, type=click.Path(exists=True,
              dir_okay=False), help="image tarball (docker-archive or OCI layout)")
@click.option("-q", "--quiet", is_flag=True, help="print nothing on success")
@click.pass_context
def load(ctx, path, quiet):
    """Load an image from a tarball."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        response = _client(ctx).open(
            "POST", "/images/load", {"quiet": 0}, body=f,
            headers={"Content-Type": "application/x-tar", "Content-Length": str(size)},
        )
        data = response.read()
    if quiet:
        return
    for line in data.splitlines():
        if line.strip():
            click.echo(json.loads(line).get("stream", "").rstrip("\n"))


@main.command()
@click.option("-f", "--force", is_flag=True, help="accepted for docker compatibility")
@click.argument("images", nargs=-1, required=True)
@click.pass_context
def rmi(ctx, force, images):
    """Remove one or more images."""
    client = _client(ctx)
    failed = False
    for ref in images:
        try:
            for item in client.call("DELETE", f"/images/{ref}", {"force": int(force)}):
                for key, value in item.items():
                    click.echo(f"{key}: {value}")
        except ClientError as err:
            _say_error(err)
            failed = True
    sys.exit(1 if failed else 0)


# ---- system ------------------------------------------------------------------


@main.command()
@click.pass_context
def version(ctx):
    """Show the client and daemon versions."""
    from . import API_VERSION, __version__

    click.echo(f"Client:\n Version:     {__version__}\n API version: {API_VERSION}\n")
    doc = _client(ctx).call("GET", "/version")
    click.echo(
        f"Server: corral\n Engine:\n  Version:     {doc['Version']}\n"
        f"  API version: {doc['ApiVersion']} (minimum version {doc['MinAPIVersion']})\n"
        f"  OS/Arch:     {doc['Os']}/{doc['Arch']}\n"
        f"  Kernel:      {doc['KernelVersion']}"
    )


@main.command()
@click.option("-f", "--format", "fmt", help="'{{.Field}}' template")
@click.pass_context
def info(ctx, fmt):
    """Show daemon-wide information."""
    doc = _client(ctx).call("GET", "/info")
    if fmt:
        click.echo(_render(fmt, doc))
        return
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
        click.echo(f"{key}: {value}")


@main.command()
@click.option("--since", help="Unix time stamp to start from")
@click.option("--until", help="Unix time stamp to stop at")
@click.option("-f", "--filter", "filters", multiple=True, help="key=value")
@click.option("--format", "fmt", help="'{{.Field}}' template, or json")
@click.pass_context
def events(ctx, since, until, filters, fmt):
    """Stream the daemon's events."""
    query_filters: dict[str, list[str]] = {}
    for item in filters:
        key, _, value = item.partition("=")
        query_filters.setdefault(key, []).append(value)
    query = {"since": since, "until": until,
             "filters": json.dumps(query_filters) if query_filters else None}
    response = _client(ctx).open("GET", "/events", query)
    try:
        for line in response:
            event = json.loads(line)
            if fmt:
                click.echo(_render(fmt, event))
            else:
                attrs = ", ".join(f"{k}={v}" for k, v in event["Actor"]["Attributes"].items())
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event["time"]))
                click.echo(f"{stamp} {event['Type']} {event['Action']} {event['id']} ({attrs})")
    except KeyboardInterrupt:
        sys.exit(130)
