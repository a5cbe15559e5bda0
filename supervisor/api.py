"""The Docker-shaped REST API: routes, parameters, and response shapes.

Paths work both unversioned and with a /v1.NN prefix. Handlers validate
their parameters up front and turn engine results into Docker's JSON.
"""

import json
import os
import platform
import re
import shlex
import tempfile
import time
from pathlib import Path

import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from metrics.exporter import Exporter
from runtime import images as rt_images

from . import API_VERSION, MIN_API_VERSION, __version__
from .container import Container
from .engine import Engine, check_wait_condition
from .errors import (
    ApiError,
    BadParameter,
    Conflict,
    MethodNotAllowed,
    NotFound,
    ServerError,
)
from .logs import Follower, LogSnapshot, parse_time_ns
from .server import Request, Response, StreamResponse, UpgradeResponse, json_response
from .status import human_status

log = structlog.get_logger()

STATS_INTERVAL_S = 1.0
_VERSION_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")
_STDOUT, _STDERR = 1, 2
_PS = "/bin/ps"
_PS_TIMEOUT_S = 10


def _bool(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _int_param(request: Request, name: str) -> int | None:
    value = request.query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise BadParameter(f"query parameter {name}={value!r} must be an integer") from None


class Api:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.exporter = Exporter(engine.metric_targets, engine.event_counts)
        self._routes = [
            ("GET", r"/_ping", self.ping),
            ("HEAD", r"/_ping", self.ping),
            ("GET", r"/version", self.version),
            ("GET", r"/info", self.info),
            ("GET", r"/events", self.events),
            ("GET", r"/metrics", self.metrics),
            ("POST", r"/containers/create", self.create),
            ("GET", r"/containers/json", self.list_containers),
            ("GET", r"/containers/(?P<ref>[^/]+)/json", self.inspect),
            ("POST", r"/containers/(?P<ref>[^/]+)/start", self.start),
            ("POST", r"/containers/(?P<ref>[^/]+)/stop", self.stop),
            ("POST", r"/containers/(?P<ref>[^/]+)/restart", self.restart),
            ("POST", r"/containers/(?P<ref>[^/]+)/kill", self.kill),
            ("POST", r"/containers/(?P<ref>[^/]+)/wait", self.wait),
            ("GET", r"/containers/(?P<ref>[^/]+)/logs", self.logs),
            ("GET", r"/containers/(?P<ref>[^/]+)/stats", self.stats),
            ("GET", r"/stats", self.all_stats),
            ("GET", r"/containers/(?P<ref>[^/]+)/top", self.top),
            ("POST", r"/containers/(?P<ref>[^/]+)/attach", self.attach),
            ("POST", r"/containers/(?P<ref>[^/]+)/exec", self.exec_create),
            ("POST", r"/exec/(?P<exec_id>[^/]+)/start", self.exec_start),
            ("GET", r"/exec/(?P<exec_id>[^/]+)/json", self.exec_inspect),
            ("DELETE", r"/containers/(?P<ref>[^/]+)", self.remove),
            ("GET", r"/images/json", self.list_images),
            ("POST", r"/images/load", self.load_image),
            ("POST", r"/images/create", self.pull_image),
            ("GET", r"/images/(?P<ref>.+)/json", self.inspect_image),
            ("DELETE", r"/images/(?P<ref>.+)", self.remove_image),
        ]
        self._compiled = [(m, re.compile(p + "$"), h) for m, p, h in self._routes]

    async def __call__(self, request: Request) -> Response | StreamResponse:
        started = time.perf_counter()
        try:
            response = await self._dispatch(request)
        except ApiError as err:
            response = json_response({"message": err.message}, err.status)
        except Exception as err:
            # The boundary of one request: a fault is logged and answered 500,
            # and the daemon keeps serving everyone else.
            log.exception("api_request_failed", path=request.path, error=str(err))
            response = json_response({"message": f"internal error: {err}"}, 500)
        duration_s = time.perf_counter() - started
        route = _route_label(self._compiled, request.method, request.path)
        self.exporter.observe_request(request.method, route, response.status,
                                      duration_s)
        log.debug("api_request", method=request.method, path=request.path,
                  status=response.status, duration_s=round(duration_s, 4))
        return response

    async def _dispatch(self, request: Request):
        path = request.path
        versioned = _VERSION_PREFIX.match(path)
        if versioned:
            path = versioned.group(3)
        allowed = False
        for method, pattern, handler in self._compiled:
            match = pattern.match(path)
            if match:
                if method == request.method:
                    return await handler(request, **match.groupdict())
                allowed = True
        if allowed:
            raise MethodNotAllowed(
                f"method {request.method} is not allowed on {path}: see the API "
                "reference for the methods it takes"
            )
        raise NotFound(f"page not found: {request.method} {request.path}")

    # ---- system ----------------------------------------------------------------

    async def ping(self, request: Request) -> Response:
        return Response(200, b"OK", "text/plain; charset=utf-8",
                        [("Cache-Control", "no-cache, no-store, must-revalidate")])

    async def version(self, request: Request) -> Response:
        uname = os.uname()
        details = {
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "Os": "linux",
            "Arch": _arch(),
            "KernelVersion": uname.release,
            "GoVersion": "python" + platform.python_version(),
            "GitCommit": "",
            "BuildTime": "",
        }
        return json_response({
            "Platform": {"Name": "corral"},
            "Components": [{"Name": "Engine", "Version": __version__, "Details": details}],
            "Version": __version__,
            "Experimental": False,
            **details,
        })

    async def info(self, request: Request) -> Response:
        containers = list(self.engine.containers.values())
        running = sum(1 for c in containers if c.running)
        layout = self.engine.cgroups.layout.value
        return json_response({
            "ID": _daemon_id(self.engine.config.root),
            "Containers": len(containers),
            "ContainersRunning": running,
            "ContainersPaused": 0,
            "ContainersStopped": len(containers) - running,
            "Images": len(self.engine.images.list()),
            "Driver": "overlay",
            "DriverStatus": [["Backing Filesystem", "overlayfs"]],
            "MemoryLimit": True,
            "SwapLimit": True,
            "CpuCfsPeriod": True,
            "CpuCfsQuota": True,
            "PidsLimit": True,
            "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": "2" if layout == "v2" else "1",
            "CorralCgroupLayout": layout,
            "KernelVersion": os.uname().release,
            "OperatingSystem": _os_name(),
            "OSType": "linux",
            "Architecture": os.uname().machine,
            "NCPU": self.engine.host_cpus,
            "MemTotal": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "DockerRootDir": str(self.engine.config.root),
            "Name": os.uname().nodename,
            "ServerVersion": __version__,
            "Runtimes": {"corral": {"path": "corral-init"}},
            "DefaultRuntime": "corral",
            "SecurityOptions": [],
            "Warnings": [],
            "Plugins": {"Volume": [], "Network": ["host", "none"], "Log": ["json-file"]},
        })

    async def events(self, request: Request) -> StreamResponse:
        since = _time_param(request, "since")
        until = _time_param(request, "until")
        filters = _filters(request)
        _check_event_filters(filters)
        bus = self.engine.events
        sub = bus.subscribe()
        replay = [e for e in bus.history if since is not None and e["timeNano"] >= since]

        async def chunks():
            try:
                for event in replay:
                    if until is not None and event["timeNano"] > until:
                        return
                    if _event_matches(event, filters):
                        yield json.dumps(event).encode() + b"\n"
                if until is not None and until <= time.time_ns():
                    return
                with trio.move_on_at(_deadline(until)):
                    async for event in sub.receive:
                        if since is not None and event["timeNano"] < since:
                            continue
                        if _event_matches(event, filters):
                            yield json.dumps(event).encode() + b"\n"
                if sub.overflowed:
                    yield json.dumps(sub.final_error()).encode() + b"\n"
            finally:
                bus.unsubscribe(sub)

        return StreamResponse(chunks())

    async def metrics(self, request: Request) -> Response:
        return Response(200, await self.exporter.render(), CONTENT_TYPE_LATEST)

    # ---- containers ------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        body = await request.json()
        container = self.engine.create(body, request.query.get("name") or None)
        return json_response({"Id": container.id, "Warnings": []}, 201)

    async def list_containers(self, request: Request) -> Response:
        show_all = _bool(request.query.get("all"))
        filters = _filters(request)
        _check_container_filters(filters)
        limit = _int_param(request, "limit")
        found = [
            c for c in self.engine.containers.values()
            if (show_all or c.running or c.state["Restarting"] or "status" in filters)
            and _container_matches(c, filters, self.engine)
        ]
        found.sort(key=lambda c: c.record["Created"], reverse=True)
        if limit and limit > 0:
            found = found[:limit]
        return json_response([_summary(c) for c in found])

    async def inspect(self, request: Request, ref: str) -> Response:
        container = self.engine.find(ref)
        state = {**container.state,
                 "CorralPressure": self.engine.pressure_view(container)}
        return json_response({**container.record, "State": state})

    async def start(self, request: Request, ref: str) -> Response:
        await self.engine.start(self.engine.find(ref))
        return Response(204)

    async def stop(self, request: Request, ref: str) -> Response:
        container = self.engine.find(ref)
        await self.engine.stop(container, _int_param(request, "t"))
        return Response(204)

    async def restart(self, request: Request, ref: str) -> Response:
        container = self.engine.find(ref)
        await self.engine.restart(container, _int_param(request, "t"))
        return Response(204)

    async def kill(self, request: Request, ref: str) -> Response:
        container = self.engine.find(ref)
        await self.engine.kill(container, request.query.get("signal"))
        return Response(204)

    async def wait(self, request: Request, ref: str) -> StreamResponse:
        container = self.engine.find(ref)
        condition = request.query.get("condition") or "not-running"
        check_wait_condition(condition)

        # A streamed reply sends its headers at once, so the client knows the
        # wait is in place before it starts the container.
        async def chunks():
            code = await self.engine.wait(container, condition)
            error = container.state.get("Error") or None
            doc = {"StatusCode": code, "Error": {"Message": error} if error else None}
            yield json.dumps(doc).encode() + b"\n"

        return StreamResponse(chunks())

    async def remove(self, request: Request, ref: str) -> Response:
        container = self.engine.find(ref)
        await self.engine.remove(container, _bool(request.query.get("force")))
        return Response(204)

    async def logs(self, request: Request, ref: str) -> StreamResponse:
        container = self.engine.find(ref)
        want = {
            "stdout": _bool(request.query.get("stdout")),
            "stderr": _bool(request.query.get("stderr")),
        }
        if not any(want.values()):
            raise BadParameter(
                "Bad parameters: you must choose at least one stream (stdout or stderr)"
            )
        tail = _tail_param(request)
        since = _time_param(request, "since")
        until = _time_param(request, "until")
        follow = _bool(request.query.get("follow"))
        stamps = _bool(request.query.get("timestamps"))
        writer = container.log
        # Both opened with no await between them: the follower reads on
        # exactly where the snapshot of the files ends.
        follower = Follower(writer) if follow else None
        snapshot = LogSnapshot(writer.path, writer.max_files,
                               follower.position if follower else None)

        def frames(batch):
            return _frames(batch, want, stamps, since, until)

        async def chunks():
            try:
                async for batch in _read_snapshot(snapshot, tail):
                    yield frames(batch)
                while follower is not None:
                    batch = follower.read_new()
                    if batch:
                        yield frames(batch)
                        continue
                    if _finished(container):
                        return
                    await writer.lot.park()
            finally:
                snapshot.close()
                if follower is not None:
                    follower.close()

        return StreamResponse(
            chunks(), content_type="application/vnd.docker.multiplexed-stream"
        )

    async def stats(self, request: Request, ref: str) -> Response | StreamResponse:
        """Docker's stats: one document, or one a second while stream=1."""
        container = self.engine.find(ref)
        stream = request.query.get("stream")
        if (stream is not None and not _bool(stream)) or _bool(
            request.query.get("one-shot")
        ):
            return json_response(self._stats_doc(container))

        async def documents():
            while not container.removed.is_set():
                yield json.dumps(self._stats_doc(container)).encode() + b"\n"
                with trio.move_on_after(STATS_INTERVAL_S):
                    await container.removed.wait()

        return StreamResponse(documents())

    async def all_stats(self, request: Request) -> Response:
        """corral's batch: the stats document of every running container."""
        return json_response(
            [self._stats_doc(c) for c in list(self.engine.containers.values())
             if c.running]
        )

    def _stats_doc(self, container: Container) -> dict:
        return self.engine.stats.stats(container, self.engine.pressure_view(container))

    async def top(self, request: Request, ref: str) -> Response:
        """The container's processes as the host's ps lists them, as dockerd
        does: ps runs with ps_args (default -ef), and only the rows whose PID
        is in the container's cgroups are kept. Pids are the host's."""
        container = self.engine.find(ref)
        ps_args = request.query.get("ps_args") or "-ef"
        _check_ps_args(ps_args)
        pids = _running_pids(container)
        output = await _run_ps(ps_args.split(), pids)
        doc = _parse_ps(output, set(pids), ps_args)
        self.engine.events.publish("top", container.id, container.attributes())
        return json_response(doc)

    async def attach(self, request: Request, ref: str) -> UpgradeResponse:
        """Live output of the container's next (or current) run."""
        container = self.engine.find(ref)
        if _bool(request.query.get("stdin")):
            raise BadParameter(
                "attaching stdin is not supported by this version of corral; "
                "attach stdout and stderr only"
            )
        want = {
            "stdout": _bool(request.query.get("stdout")),
            "stderr": _bool(request.query.get("stderr")),
        }
        writer = container.log
        follower = Follower(writer)
        snapshot = (LogSnapshot(writer.path, writer.max_files, follower.position)
                    if _bool(request.query.get("logs")) else None)
        stream = _bool(request.query.get("stream"))

        async def chunks():
            seen_running = container.running
            try:
                if snapshot is not None:
                    async for batch in _read_snapshot(snapshot, None):
                        yield _frames(batch, want, False, None, None)
                while stream:
                    batch = follower.read_new()
                    if batch:
                        yield _frames(batch, want, False, None, None)
                        continue
                    seen_running = seen_running or container.running
                    if container.removed.is_set() or (
                        seen_running and _finished(container)
                    ):
                        return
                    await writer.lot.park()
            finally:
                if snapshot is not None:
                    snapshot.close()
                follower.close()

        return UpgradeResponse(chunks())

    # ---- exec ------------------------------------------------------------------

    async def exec_create(self, request: Request, ref: str) -> Response:
        container = self.engine.find(ref)
        inst = self.engine.exec_create(container, await request.json())
        return json_response({"Id": inst.id}, 201)

    async def exec_start(self, request: Request, exec_id: str):
        inst = self.engine.find_exec(exec_id)
        body = await request.json()
        if body.get("Tty"):
            raise BadParameter("a TTY for exec is not supported by this version of corral")
        if inst.started:
            raise Conflict(f"exec {exec_id} has already been started")
        if inst.container.run is None:
            raise Conflict(f"Container {inst.container.id} is not running")
        if body.get("Detach"):
            self.engine.exec_start(inst, None)
            return Response(200, b"", "application/json")
        send, receive = trio.open_memory_channel(16)
        want = {"stdout": inst.attach_stdout, "stderr": inst.attach_stderr}

        async def output(stream: str, data: bytes) -> None:
            if not want[stream]:
                return
            kind = _STDOUT if stream == "stdout" else _STDERR
            frame = bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data
            try:
                await send.send(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        self.engine.exec_start(inst, output, on_done=send.close)

        async def chunks():
            async with receive:
                async for frame in receive:
                    yield frame

        return UpgradeResponse(chunks())

    async def exec_inspect(self, request: Request, exec_id: str) -> Response:
        return json_response(self.engine.find_exec(exec_id).inspect())

    # ---- images ----------------------------------------------------------------

    async def list_images(self, request: Request) -> Response:
        images = await trio.to_thread.run_sync(self.engine.images.list)
        return json_response([_image_summary(i) for i in images])

    async def inspect_image(self, request: Request, ref: str) -> Response:
        image = self._image(ref)
        return json_response(_image_inspect(image))

    async def load_image(self, request: Request) -> Response:
        # quiet=1 only turns off progress output, which corral has none of:
        # the "Loaded image" lines are sent either way, as Docker does, and
        # the docker CLI asks for quiet whenever its output is not a terminal.
        tmp_dir = self.engine.config.root / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="load-", suffix=".tar")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.iter_body():
                    await trio.to_thread.run_sync(out.write, chunk)
            try:
                images = await trio.to_thread.run_sync(
                    self.engine.images.load, path, "the uploaded image tarball"
                )
            except rt_images.ImageError as err:
                raise BadParameter(str(err)) from None
        finally:
            path.unlink(missing_ok=True)
        lines = []
        for image in images:
            self.engine.events.publish("load", image.id, {"name": image.id}, "image")
            tags = image.repo_tags or []
            lines += [f"Loaded image: {t}\n" for t in tags] or [f"Loaded image ID: {image.id}\n"]
        body = b"".join(json.dumps({"stream": line}).encode() + b"\n" for line in lines)
        return Response(200, body)

    async def pull_image(self, request: Request) -> Response:
        ref = request.query.get("fromImage", "")
        raise NotFound(
            f"cannot pull {ref or 'images'}: corral does not pull from registries; "
            "save the image to a tarball elsewhere and load it with `corral load -i FILE`"
        )

    async def remove_image(self, request: Request, ref: str) -> Response:
        image = self._image(ref)
        users = [c for c in self.engine.containers.values() if c.record["Image"] == image.id]
        # Removing one of several tags only untags, so the image stays for its
        # containers; Docker allows that too.
        by_id = image.id.removeprefix("sha256:").startswith(ref.removeprefix("sha256:"))
        if users and (by_id or len(image.repo_tags or []) < 2):
            user = users[0]
            state = "running" if user.running else "stopped"
            raise Conflict(
                f"conflict: unable to remove {ref}: image is being used by {state} "
                f"container {user.id[:12]} ({user.name}); remove that container first "
                "(corral rm -f)"
            )
        try:
            result = await trio.to_thread.run_sync(self.engine.images.remove, ref)
        except rt_images.ImageError as err:
            raise BadParameter(str(err)) from None
        for item in result:
            action = "untag" if "Untagged" in item else "delete"
            self.engine.events.publish(action, image.id, {"name": ref}, "image")
        return json_response(result)

    def _image(self, ref: str) -> rt_images.Image:
        try:
            return self.engine.images.get(ref)
        except rt_images.ImageNotFound:
            raise NotFound(f"No such image: {ref}") from None
        except rt_images.ImageError as err:
            raise BadParameter(str(err)) from None


_ROUTE_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


def _route_label(compiled, method: str, path: str) -> str:
    """The route pattern a request matches, as /containers/{ref}/json, for
    a metric label: bounded, unlike the paths; "other" for unknown paths."""
    versioned = _VERSION_PREFIX.match(path)
    if versioned:
        path = versioned.group(3)
    fallback = None
    for route_method, pattern, _ in compiled:
        if pattern.match(path):
            template = _ROUTE_GROUP.sub(r"{\1}", pattern.pattern.removesuffix("$"))
            if route_method == method:
                return template
            fallback = fallback or template
    return fallback or "other"


async def _read_snapshot(snapshot: LogSnapshot, tail: int | None):
    """The snapshot's entries in batches, each read in a worker thread."""
    if tail is not None:
        yield await trio.to_thread.run_sync(snapshot.tail, tail)
        return
    batches = snapshot.batches()
    while batch := await trio.to_thread.run_sync(next, batches, None):
        yield batch


def _frames(batch, want: dict, stamps: bool, since, until) -> bytes:
    """Entries as Docker's multiplexed stream: an 8-byte header per frame."""
    out = []
    for entry in batch:
        if not want[entry.stream]:
            continue
        if since is not None and entry.time_ns < since:
            continue
        if until is not None and entry.time_ns > until:
            continue
        data = (entry.time.encode() + b" " if stamps else b"") + entry.data
        kind = _STDOUT if entry.stream == "stdout" else _STDERR
        out.append(bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data)
    return b"".join(out)


def _finished(container: Container) -> bool:
    """True when no more output can come: stopped with no restart pending."""
    return container.removing or container.removed.is_set() or not (
        container.running or container.state["Restarting"]
    )


# ps separates its columns with ASCII blanks only; a command's own
# Unicode spaces stay inside its field.
_PS_BLANKS = re.compile(r"[\t\n\f\r ]+")
# `-o comm=PID` would title another column PID, and its values be taken
# for pids.
_PS_PID_TITLE = re.compile(r"\s+(\S*)=\s*(PID\S*)")


def _check_ps_args(ps_args: str) -> None:
    for key, title in _PS_PID_TITLE.findall(" " + ps_args):
        if key != "pid":
            raise BadParameter(
                f"invalid ps_args {ps_args!r}: {key}={title} titles a column PID, "
                "and only the pid column may have that title; choose another title"
            )


def _running_pids(container: Container) -> list[int]:
    """Host pids in the container's cgroups; 409 when it is not running."""
    run = container.run
    if run is None and container.state["Restarting"]:
        raise Conflict(
            f"Container {container.id} is restarting, wait until the container "
            "is running"
        )
    if run is None:
        raise Conflict(f"Container {container.id} is not running")
    try:
        return run.cgroup.pids()
    except FileNotFoundError:
        # The run ended, and its cgroup went, since the check above.
        raise Conflict(f"Container {container.id} is not running") from None


async def _run_ps(args: list[str], pids: list[int]) -> str:
    """ps's output. As dockerd does, ps is first asked for the container's
    pids only (-q, cheaper on a busy host); some listings, such as forests,
    refuse -q, so a failure runs it again with the caller's options alone."""
    result = None
    if pids:
        result = await _ps([*args, "-q" + ",".join(map(str, pids))])
    if result is None or result.returncode != 0:
        result = await _ps(args)
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        reason = lines[0] if lines else f"exit status {result.returncode}"
        raise BadParameter(
            f"invalid ps_args {' '.join(args)!r}: ps failed: {reason}; give options "
            "the host's ps (procps) accepts, for example -ef or -o pid,comm"
        )
    return result.stdout.decode(errors="replace")


async def _ps(args: list[str]):
    try:
        with trio.fail_after(_PS_TIMEOUT_S):
            return await trio.run_process(
                [_PS, *args],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=_ps_env(),
            )
    except trio.TooSlowError:
        raise ServerError(
            f"ps {shlex.join(args)} did not finish within {_PS_TIMEOUT_S} s and was "
            "killed; see whether /proc of a process on the host hangs"
        ) from None
    except OSError as err:
        raise ServerError(
            f"cannot run {_PS} to list processes: {err.strerror}; install procps "
            "on the host"
        ) from None


def _ps_env() -> dict[str, str]:
    # ps cuts its lines at COLUMNS, and repeats its header every LINES rows
    # with --headers, even into a pipe. A corrald started from a shell or a
    # test runner inherits both; without them ps prints whole lines.
    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}


def _parse_ps(output: str, pids: set[int], ps_args: str) -> dict:
    """Docker's top reply: ps's titles, and the rows of the given pids, each
    followed by its thread rows (PID "-", as `-L` or `m` print them)."""
    lines = output.split("\n")
    titles = _ps_fields(lines[0])
    if "PID" not in titles:
        raise BadParameter(
            f"invalid ps_args {ps_args!r}: ps printed no PID column (its titles: "
            f"{' '.join(titles) or 'none'}); include the pid column, for example "
            "-o pid,comm"
        )
    index = titles.index("PID")
    processes, in_container = [], False
    for line in lines[1:]:
        fields = _ps_fields(line)
        if len(fields) <= index:
            continue
        if fields[index] == "-":
            if in_container:
                processes.append(_ps_row(fields, len(titles)))
            continue
        try:
            pid = int(fields[index])
        except ValueError:
            raise BadParameter(
                f"invalid ps_args {ps_args!r}: {fields[index]!r} in the PID column is "
                "not a pid; a column before it holds spaces (such as lstart), so "
                "put pid before it"
            ) from None
        in_container = pid in pids
        if in_container:
            processes.append(_ps_row(fields, len(titles)))
    return {"Titles": titles, "Processes": processes}


def _ps_fields(line: str) -> list[str]:
    return [field for field in _PS_BLANKS.split(line) if field]


def _ps_row(fields: list[str], width: int) -> list[str]:
    """One value per title: the last column (the command) takes the rest."""
    row = fields[: width - 1] + [" ".join(fields[width - 1 :])]
    return row + [""] * (width - len(row))


def _tail_param(request: Request) -> int | None:
    value = request.query.get("tail", "all")
    if value in ("", "all"):
        return None
    try:
        tail = int(value)
    except ValueError:
        raise BadParameter(f"tail={value!r} must be a number or 'all'") from None
    return None if tail < 0 else tail


def _time_param(request: Request, name: str) -> int | None:
    """Unix time in ns from Docker's "seconds[.nanoseconds]" parameters."""
    value = request.query.get(name)
    if value in (None, ""):
        return None
    try:
        seconds, _, frac = value.partition(".")
        return int(seconds) * 1_000_000_000 + int(frac.ljust(9, "0")[:9] or 0)
    except ValueError:
        pass
    try:
        return parse_time_ns(value)
    except ValueError:
        raise BadParameter(
            f"{name}={value!r} must be a Unix time stamp (seconds[.nanoseconds]) "
            "or an RFC 3339 time"
        ) from None


def _deadline(until_ns: int | None) -> float:
    if until_ns is None:
        return float("inf")
    return trio.current_time() + max(0.0, (until_ns - time.time_ns()) / 1e9)


def _filters(request: Request) -> dict[str, list[str]]:
    raw = request.query.get("filters")
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        raise BadParameter(f"filters={raw!r} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadParameter("filters must be a JSON object of lists")
    # Older clients send {"name": {"x": true}} instead of {"name": ["x"]}.
    return {k: list(v) if isinstance(v, (list, dict)) else [str(v)] for k, v in doc.items()}


_CONTAINER_FILTERS = ("id", "name", "status", "label", "exited", "ancestor", "before", "since")


def _check_container_filters(filters: dict) -> None:
    """Refuse bad filters up front, even when no container would be matched."""
    unknown = set(filters) - set(_CONTAINER_FILTERS)
    if unknown:
        raise BadParameter(
            f"invalid filter {min(unknown)!r}: corral filters containers by "
            + ", ".join(_CONTAINER_FILTERS)
        )
    for pattern in filters.get("name", []):
        try:
            re.compile(pattern)
        except re.error as err:
            raise BadParameter(f"invalid name filter {pattern!r}: {err}") from None
    for status in filters.get("status", []):
        if status not in _STATUSES:
            raise BadParameter(
                f"invalid filter 'status={status}': a status is one of "
                + ", ".join(_STATUSES)
            )


# Docker's container states, which the status filter accepts.
_STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def _container_matches(container: Container, filters: dict, engine: Engine) -> bool:
    checks = {
        "id": lambda v: container.id.startswith(v),
        "name": lambda v: re.search(v, container.name) is not None
        or re.search(v, "/" + container.name) is not None,
        "status": lambda v: container.state["Status"] == v,
        "label": lambda v: _label_matches(container.record["Config"]["Labels"], v),
        "exited": lambda v: not container.running
        and container.state["StartedAt"] != "0001-01-01T00:00:00Z"
        and str(container.state["ExitCode"]) == v,
        "ancestor": lambda v: v in (container.record["Config"]["Image"],
                                    container.record["Image"]),
        "before": lambda v: container.record["Created"] < engine.find(v).record["Created"],
        "since": lambda v: container.record["Created"] > engine.find(v).record["Created"],
    }
    return all(any(checks[k](v) for v in values) for k, values in filters.items())


def _label_matches(labels: dict, wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


_EVENT_FILTERS = ("type", "event", "container", "image", "label")


def _check_event_filters(filters: dict) -> None:
    """Refuse bad filters before the stream starts: later, an error can
    only cut the stream off."""
    unknown = set(filters) - set(_EVENT_FILTERS)
    if unknown:
        raise BadParameter(
            f"invalid filter {min(unknown)!r}: corral filters events by "
            + ", ".join(_EVENT_FILTERS)
        )


def _event_matches(event: dict, filters: dict) -> bool:
    attrs = event["Actor"]["Attributes"]
    checks = {
        "type": lambda v: event["Type"] == v,
        "event": lambda v: event["Action"] == v,
        "container": lambda v: event["Type"] == "container"
        and (event["id"].startswith(v) or attrs.get("name") == v),
        "image": lambda v: attrs.get("image") == v or attrs.get("name") == v,
        "label": lambda v: _label_matches(attrs, v),
    }
    for key, values in filters.items():
        check = checks.get(key)
        if check is None:
            raise BadParameter(
                f"invalid filter {key!r}: corral filters events by " + ", ".join(checks)
            )
        if not any(check(v) for v in values):
            return False
    return True


def _summary(container: Container) -> dict:
    record = container.record
    command = " ".join(shlex.quote(a) for a in [record["Path"], *record["Args"]])
    return {
        "Id": container.id,
        "Names": [record["Name"]],
        "Image": record["Config"]["Image"],
        "ImageID": record["Image"],
        "Command": command,
        "Created": int(parse_time_ns(record["Created"]) // 1_000_000_000),
        "Ports": [],
        "Labels": record["Config"]["Labels"],
        "State": container.state["Status"],
        "Status": human_status(container.state),
        "HostConfig": {"NetworkMode": record["HostConfig"]["NetworkMode"]},
        "NetworkSettings": {"Networks": record["NetworkSettings"]["Networks"]},
        "Mounts": [],
    }


def _image_summary(image: rt_images.Image) -> dict:
    return {
        "Id": image.id,
        "ParentId": "",
        "RepoTags": image.repo_tags,
        "RepoDigests": [],
        "Created": _unix(image.created),
        "Size": image.size,
        "SharedSize": -1,
        "VirtualSize": image.size,
        "Labels": image.config.get("Labels") or {},
        "Containers": -1,
    }


def _image_inspect(image: rt_images.Image) -> dict:
    return {
        "Id": image.id,
        "RepoTags": image.repo_tags,
        "RepoDigests": [],
        "Parent": "",
        "Comment": "",
        "Created": image.created,
        "Config": image.config,
        "Architecture": image.architecture,
        "Os": image.os,
        "Size": image.size,
        "VirtualSize": image.size,
        "RootFS": {"Type": "layers", "Layers": image.diff_ids},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }


def _unix(rfc3339: str) -> int:
    try:
        return int(parse_time_ns(rfc3339) // 1_000_000_000)
    except ValueError:
        return 0


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "Linux"


def _daemon_id(root: Path) -> str:
    path = root / "daemon-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        import uuid

        value = str(uuid.uuid4())
        path.write_text(value + "\n")
        return value

