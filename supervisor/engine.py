"""Container lifecycle: create, start, stop, kill, restart, remove, wait.

One supervision task per running container waits on its PID 1's pidfd (no
polling), pumps its stdout and stderr into the json-file log, and records the
exit. The record is written to the store before anything is started and after
every transition, so a daemon restart finds every container as it last was.
"""

import dataclasses
import functools
import os
import random
import secrets
import shutil
import signal
import time
from pathlib import Path

import structlog
import trio

from metrics.collector import Target
from runtime import cgroups as rt_cgroups
from runtime import images as rt_images
from runtime import pressure as rt_pressure
from runtime import process as rt_process
from runtime.kmsg import KernelLog

from . import execs, health, names, policy, validation
from . import pressure as pressure_rules
from ._procs import read_to_eof, reap, wait_process
from .config import DaemonConfig
from .container import ZERO_TIME, Container, Run, new_state, now_rfc3339
from .errors import (
    BadParameter,
    Conflict,
    NotFound,
    NotModified,
    ServerError,
    no_such_container,
)
from .events import EventBus
from .logs import LineSplitter, LogWriter, parse_time_ns
from .stats import StatsKeeper
from .store import Store
from .watchers import OomKill, PressureMode, RunWatch

log = structlog.get_logger()

HELPER_TIMEOUT_S = 30
PUMP_DRAIN_S = 2
READ_BYTES = 64 * 1024
WAIT_CONDITIONS = ("not-running", "next-exit", "removed")
MAX_TERMINATIONS = 10
HOSTS_TEMPLATE = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    "127.0.1.1\t{hostname}\n"
)


class Engine:
    def __init__(
        self,
        config: DaemonConfig,
        store: Store,
        images: rt_images.ImageStore,
        cgroups: rt_cgroups.CgroupManager,
        events: EventBus,
    ):
        self.config = config
        self.store = store
        self.images = images
        self.cgroups = cgroups
        self.events = events
        self.containers: dict[str, Container] = {}
        self.names: dict[str, str] = {}
        self.host_cpus = rt_cgroups.host_cpu_count()
        self._nursery: trio.Nursery | None = None
        self._shutting_down = False
        self.execs: dict[str, execs.ExecInstance] = {}
        self._dir = config.root / "containers"
        self.kmsg: KernelLog | None = None
        self.stats = StatsKeeper()
        # Done events of the cgroup removals under way; shutdown waits for them.
        self._releasing: set[trio.Event] = set()
        self.pressure_mode = PressureMode("unavailable", 1.0)

    # ---- set-up and shutdown -------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Own every supervision task; started once per daemon."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._start_watching()
        self._load()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._start_on_daemon_start()
            await trio.sleep_forever()

    def _start_watching(self) -> None:
        """Open the kernel log for OOM victims; find how pressure is watched."""
        self.kmsg = KernelLog()
        if self.kmsg.error:
            log.warning("kernel_log_unreadable", error=self.kmsg.error,
                        consequence="OOM events do not name the killed process")
        self.pressure_mode = PressureMode.detect(self.cgroups.parent_dirs().unified)
        log.info("pressure_watch_mode", mode=self.pressure_mode.mode,
                 window_s=self.pressure_mode.window_s)

    async def _start_on_daemon_start(self) -> None:
        """Start the containers whose restart policy says to, counts intact."""
        for container in list(self.containers.values()):
            rules = policy.RestartPolicy.from_host_config(container.record["HostConfig"])
            state = self._restart_state(container)
            started_before = container.state["StartedAt"] != ZERO_TIME
            if not started_before or not policy.should_start_on_daemon_start(
                rules, state, container.state["ExitCode"]
            ):
                continue
            try:
                async with container.lock:
                    self._set_restart_state(container,
                                            policy.started_on_daemon_start(state))
                    run = await self._launch(container)
            except (ServerError, BadParameter) as err:
                log.warning("restart_failed", container=container.id, error=err.message,
                            consequence="the container stays stopped")
                continue
            self._nursery.start_soon(self._supervise, container, run)

    def _load(self) -> None:
        for record in self.store.load_containers():
            container = self._adopt(record)
            if container.running or container.state["Restarting"]:
                self._settle_after_daemon_exit(container)
            # An --rm container whose run ended while no daemon watched is
            # removed now, as it would have been then; its files go below.
            if record["HostConfig"]["AutoRemove"] and container.state["Status"] == "exited":
                self._forget(container)
        self._remove_leftovers()

    def _adopt(self, record: dict) -> Container:
        directory = self._dir / record["Id"]
        container = Container(record, directory, self._log_writer(record, directory))
        self.containers[container.id] = container
        self.names[container.name] = container.id
        return container

    def _log_writer(self, record: dict, directory: Path) -> LogWriter:
        options = record["HostConfig"]["LogConfig"]["Config"]
        max_size, max_files = validation.log_limits(options)
        return LogWriter(Path(record["LogPath"]), max_size, max_files)

    def _settle_after_daemon_exit(self, container: Container) -> None:
        # The daemon went away while this container ran: its output pipes went
        # with it. Anything still in its cgroup is killed so the record and the
        # host agree, and the exit is recorded as a daemon-side failure. A
        # container that was waiting out a restart delay keeps its last exit.
        self._kill_leftover_cgroup(container.id)
        if not container.running:
            container.state.update(Status="exited", Restarting=False)
            state = self._restart_state(container)
            self._set_restart_state(
                container, dataclasses.replace(state, next_restart_at_s=None))
            self._save(container)
            return
        container.state.update(
            Status="exited",
            Running=False,
            Restarting=False,
            Pid=0,
            ExitCode=255,
            Error="corrald stopped while the container was running",
            FinishedAt=now_rfc3339(),
        )
        self._save(container)
        log.info("container_exited", container=container.id, exit_code=255,
                 reason="daemon restarted")

    def _kill_leftover_cgroup(self, name: str) -> None:
        try:
            cgroup = self.cgroups.open(name)
            cgroup.kill()
            cgroup.remove()
        except (rt_cgroups.CgroupError, FileNotFoundError) as err:
            log.warning("cgroup_cleanup_failed", name=name, error=str(err))

    def _remove_leftovers(self) -> None:
        # A cgroup of a stopped container is left by a start that the
        # daemon's exit cut short.
        for name in self.cgroups.names():
            if name not in self.containers or not self.containers[name].running:
                self._kill_leftover_cgroup(name)
        for entry in self._dir.iterdir():
            if entry.name not in self.containers:
                shutil.rmtree(entry, ignore_errors=True)

    async def shutdown(self) -> None:
        """Stop every running container, each with its own stop timeout.

        These stops are the daemon's, not the user's: they are not recorded
        as manual stops, so restart policies bring the containers back when
        the daemon starts again.
        """
        self._shutting_down = True
        async with trio.open_nursery() as nursery:
            for container in list(self.containers.values()):
                nursery.start_soon(self._shut_down_one, container)
        # The stopped (and removed) containers' cgroups go before the daemon.
        while self._releasing:
            await next(iter(self._releasing)).wait()

    async def _shut_down_one(self, container: Container) -> None:
        if self._cancel_pending_restart(container):
            self._save(container)
        # A start under way finishes first (no start begins after
        # _shutting_down is set), so its run is stopped, not left behind.
        if await self._settled_run(container) is not None:
            await self.stop(container, None, False)

    # ---- lookup ----------------------------------------------------------------

    def find(self, ref: str) -> Container:
        """A container by full id, name, or unique id prefix."""
        ref = ref.lstrip("/")
        if ref in self.containers:
            return self.containers[ref]
        if ref in self.names:
            return self.containers[self.names[ref]]
        matches = [c for cid, c in self.containers.items() if cid.startswith(ref)]
        if len(matches) == 1 and ref:
            return matches[0]
        if len(matches) > 1:
            raise BadParameter(
                f"multiple containers found with id prefix {ref}: give more characters"
            )
        raise no_such_container(ref)

    # ---- create ----------------------------------------------------------------

    def create(self, body: dict, name: str | None) -> Container:
        """Validate, then record a new container; nothing is started."""
        if name:
            name = validation.validate_name(name)
        image_ref = body.get("Image") if isinstance(body, dict) else None
        if not image_ref or not isinstance(image_ref, str):
            raise BadParameter("no image given: set Image in the request body")
        image = self._image(image_ref)
        spec = validation.build_spec(body, name or "", image.config, self.host_cpus)
        if spec.host_config.get("Init") and not self.config.init_path.is_file():
            raise BadParameter(
                f"--init needs an init program at {self.config.init_path}, which is "
                "missing: install Debian's tini package, or set init_path in "
                "corrald's config"
            )
        name = name or self._generate_name()
        self._check_name_free(name)
        container_id = secrets.token_hex(32)
        record = self._new_record(container_id, name, spec, image)
        directory = self._dir / container_id
        directory.mkdir(parents=True)
        container = Container(record, directory, self._log_writer(record, directory))
        # Reserved before any await, so concurrent creates of one name cannot
        # both pass the check above.
        self.containers[container_id] = container
        self.names[name] = container_id
        self._save(container)
        self.events.publish("create", container_id, container.attributes())
        log.info("container_created", container=container_id, name=name)
        return container

    def _image(self, ref: str) -> rt_images.Image:
        try:
            return self.images.get(ref)
        except rt_images.ImageNotFound:
            raise NotFound(
                f"No such image: {ref}; load it first with `corral load -i FILE`"
            ) from None
        except rt_images.ImageError as err:
            raise BadParameter(str(err)) from None

    def _check_name_free(self, name: str) -> None:
        if name in self.names:
            raise Conflict(
                f'Conflict. The container name "/{name}" is already in use by container '
                f'"{self.names[name]}". You have to remove (or rename) that container '
                "to be able to reuse that name."
            )

    def _generate_name(self) -> str:
        while True:
            candidate = names.random_name()
            if candidate not in self.names:
                return candidate

    def _new_record(self, container_id, name, spec, image) -> dict:
        directory = self._dir / container_id
        config = spec.config
        if spec.host_config["NetworkMode"] == "host":
            config["Hostname"] = config["Hostname"] or os.uname().nodename
        config["Hostname"] = config["Hostname"] or container_id[:12]
        return {
            "Id": container_id,
            "Created": now_rfc3339(),
            "Path": spec.path,
            "Args": spec.args,
            "State": new_state(),
            "Image": image.id,
            "ResolvConfPath": str(directory / "resolv.conf"),
            "HostnamePath": str(directory / "hostname"),
            "HostsPath": str(directory / "hosts"),
            "LogPath": str(directory / f"{container_id}-json.log"),
            "Name": "/" + name,
            "RestartCount": 0,
            "Driver": "overlay",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": None,
            "HostConfig": spec.host_config,
            "GraphDriver": {
                "Name": "overlay",
                "Data": {
                    "UpperDir": str(directory / "upper"),
                    "WorkDir": str(directory / "work"),
                    "MergedDir": str(directory / "rootfs"),
                },
            },
            "Mounts": [],
            "Config": config,
            "NetworkSettings": _network_settings(spec.host_config["NetworkMode"]),
        }

    # ---- start -----------------------------------------------------------------

    async def start(self, container: Container) -> None:
        """A manual start: resets the restart count and any pending restart."""
        async with container.lock:
            if self._shutting_down:
                raise ServerError("corrald is shutting down: start the container "
                                  "again once it is back")
            if container.removing:
                raise Conflict(f"container {container.name} is being removed")
            if container.running:
                raise NotModified("container already started")
            self._cancel_pending_restart(container)
            self._set_restart_state(container, policy.manual_start(self._restart_state(container)))
            container.record["RestartCount"] = 0
            run = await self._launch(container)
        self._nursery.start_soon(self._supervise, container, run)

    async def _launch(self, container: Container) -> Run:
        """Spawn the container's PID 1 and record the run; raises on failure."""
        if container.cgroup_released is not None:
            await container.cgroup_released.wait()
        kept, container.kept_run = container.kept_run, None
        try:
            spec, cgroup = self._prepare(container, kept.cgroup if kept else None)
        except BaseException:
            if kept is not None:
                container.cgroup_released = done = trio.Event()
                self._spawn_release(kept.cgroup, done)
            raise
        # A reused cgroup has counted the OOM kills of earlier runs.
        oom_kills_before = (
            rt_cgroups.memory_events(cgroup.dirs).get("oom_kill", 0) if kept else 0
        )
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            spawned = rt_process.spawn_init(spec, out_w, err_w)
        except (OSError, ValueError, rt_process.ProcessError) as err:
            for fd in (out_r, err_r):
                os.close(fd)
            self._drop_cgroup(cgroup)
            if isinstance(err, ValueError):  # a setting the create checks let through
                raise BadParameter(f"cannot start container {container.name}: {err}") from err
            raise ServerError(f"cannot start container {container.name}: {err}") from err
        finally:
            os.close(out_w)
            os.close(err_w)
        result = await self._collect_start(spawned)
        if result.error:
            for fd in (out_r, err_r):
                os.close(fd)
            await self._fail_start(container, result, cgroup)
        run = Run(result.pid, os.pidfd_open(result.pid), cgroup, out_r, err_r,
                  time.monotonic(), oom_kills_before=oom_kills_before)
        container.run = run
        container.state.update(
            Status="running",
            Running=True,
            Restarting=False,
            Pid=run.pid,
            ExitCode=0,
            Error="",
            OOMKilled=False,
            StartedAt=now_rfc3339(),
            FinishedAt=ZERO_TIME,
        )
        self._save(container)
        self.stats.run_started(container)
        self.events.publish("start", container.id, container.attributes())
        log.info("container_started", container=container.id, pid=run.pid)
        container.log.wake()
        return run

    def _prepare(self, container: Container, cgroup=None):
        record = container.record
        image = self._image(record["Image"])
        layers = [str(p) for p in self.images.layer_dirs(image)]
        directory = container.directory
        for sub in ("upper", "work", "rootfs"):
            (directory / sub).mkdir(exist_ok=True)
        network = record["HostConfig"]["NetworkMode"]
        self._write_etc_files(container, network)
        try:
            if cgroup is None:
                cgroup = self.cgroups.create(container.id, _limits(record["HostConfig"]))
        except rt_cgroups.CgroupError as err:
            raise ServerError(f"cannot start container {container.name}: {err}") from err
        spec = rt_process.InitSpec(
            args=[record["Path"], *record["Args"]],
            env=_with_hostname(record["Config"]["Env"], record["Config"]["Hostname"]),
            cwd=record["Config"]["WorkingDir"] or "/",
            user=record["Config"]["User"],
            hostname=record["Config"]["Hostname"],
            network=network,
            rootfs_lower=layers,
            rootfs_upper=str(directory / "upper"),
            rootfs_work=str(directory / "work"),
            rootfs_target=str(directory / "rootfs"),
            cgroup_procs=[str(p) for p in cgroup.procs_files()],
            cgroup_mounts=cgroup.mounts_in_container(),
            init_path=str(self.config.init_path) if record["HostConfig"].get("Init")
            else None,
            bind_files={
                "/etc/hostname": record["HostnamePath"],
                "/etc/hosts": record["HostsPath"],
                "/etc/resolv.conf": record["ResolvConfPath"],
            },
        )
        return spec, cgroup

    def _write_etc_files(self, container: Container, network: str) -> None:
        record = container.record
        hostname = record["Config"]["Hostname"]
        Path(record["HostnamePath"]).write_text(hostname + "\n")
        if network == "host":
            hosts = _read_host_file("/etc/hosts")
            resolv = _read_host_file("/etc/resolv.conf")
        else:
            hosts = HOSTS_TEMPLATE.format(hostname=hostname)
            resolv = _without_loopback(_read_host_file("/etc/resolv.conf"))
        Path(record["HostsPath"]).write_text(hosts)
        Path(record["ResolvConfPath"]).write_text(resolv)

    async def _collect_start(self, spawned) -> "rt_process.StartResult":
        data = b""
        with trio.move_on_after(HELPER_TIMEOUT_S) as scope:
            data = await read_to_eof(spawned.status_fd)
            await wait_process(spawned.helper)
        if scope.cancelled_caught:
            spawned.helper.kill()
            await wait_process(spawned.helper)
            os.close(spawned.status_fd)
            return rt_process.StartResult(
                pid=None,
                error=f"the container init helper did not finish within "
                f"{HELPER_TIMEOUT_S} s",
                exit_code=125,
            )
        return rt_process.parse_status(data)

    async def _fail_start(self, container, result, cgroup) -> None:
        if result.pid:
            await reap(result.pid)
        self._drop_cgroup(cgroup)
        exit_code = result.exit_code or 125
        container.state.update(
            Status="exited" if container.state["StartedAt"] != ZERO_TIME else "created",
            Running=False,
            Pid=0,
            ExitCode=exit_code,
            Error=result.error,
        )
        self._save(container)
        log.info("container_start_failed", container=container.id, error=result.error,
                 exit_code=exit_code)
        message = f"failed to start container {container.name}: {result.error}"
        if container.record["HostConfig"]["AutoRemove"]:
            container.removing = True
            self._forget(container)
            self._nursery.start_soon(trio.to_thread.run_sync, _remove_tree,
                                     container.directory)
        if exit_code in (126, 127):
            raise BadParameter(message)
        raise ServerError(message)

    # ---- supervision -----------------------------------------------------------

    async def _supervise(self, container: Container, run: Run) -> None:
        """Watch runs of one container and restart it as its policy says."""
        structlog.contextvars.bind_contextvars(container=container.id)
        try:
            while run is not None:
                status = await self._watch_run(container, run)
                self._finish_run(container, run, status)
                container.cgroup_released = run.released
                run = await self._restart_after(container, run, status)
        except Exception:
            # One container's failure must never take the daemon down with it.
            log.exception("supervision_failed")
            self._abandon(container)
        if container.record["HostConfig"]["AutoRemove"] and not container.removing:
            await self.remove(container, force=True)

    def _abandon(self, container: Container) -> None:
        """After a supervision fault: kill the run so no caller waits forever."""
        run = container.run
        if run is None:
            return
        try:
            signal.pidfd_send_signal(run.pidfd, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass
        self._nursery.start_soon(reap, run.pid)
        self._finish_run(container, run, rt_process.ExitStatus(exit_code=137, signal=9))
        self._drop_cgroup(run.cgroup)
        run.released.set()
        container.state["Error"] = "corrald lost track of this run and killed it"
        self._save(container)

    async def _watch_run(self, container: Container, run: Run):
        check = health.HealthConfig.from_config(container.record["Config"].get("Healthcheck"))
        run.watch = self._run_watch(container, run)
        async with trio.open_nursery() as pumps:
            pumps.start_soon(self._pump, container, run.stdout_fd, "stdout")
            pumps.start_soon(self._pump, container, run.stderr_fd, "stderr")
            probes = trio.CancelScope()
            if check is not None:
                pumps.start_soon(self._check_health, container, run, check, probes)
            watchers = trio.CancelScope()
            pumps.start_soon(_in_scope, watchers, run.watch.watch_oom,
                             run.watch.watch_pressure)
            await trio.lowlevel.wait_readable(run.pidfd)
            probes.cancel()
            watchers.cancel()
            status = rt_process.exit_status(run.pidfd)
            # Before the die event: an OOM kill whose notification has not
            # been handled yet is reported now, so oom always precedes die.
            run.watch.check_oom()
            # PID 1's death tears down its pid namespace, so the pipes close
            # promptly; the deadline only guards against a stray holder.
            pumps.cancel_scope.deadline = trio.current_time() + PUMP_DRAIN_S
        os.close(run.pidfd)
        return status

    def _run_watch(self, container: Container, run: Run) -> RunWatch:
        host = container.record["HostConfig"]
        return RunWatch(
            container_id=container.id,
            pid1=run.pid,
            dirs=run.cgroup.dirs,
            kmsg=self.kmsg,
            mode=self.pressure_mode,
            pressure=pressure_rules.PressureConfig.from_host_config(host),
            oom_kills_seen=run.oom_kills_before,
            on_oom=lambda kills: self._on_oom(container, run, kills),
            on_pressure=lambda resource, turn, share: self._on_pressure(
                container, run, resource, turn, share),
        )

    def _on_oom(self, container: Container, run: Run, kills: list[OomKill]) -> None:
        state = container.state
        state["OOMKilled"] = True
        state["CorralOomKillCount"] = state.get("CorralOomKillCount", 0) + len(kills)
        self._save(container)
        for kill in kills:
            extra = {}
            if kill.pid is not None:
                extra = {"pid": kill.pid, "pid1": str(kill.pid1).lower()}
                run.pid1_oom_killed = run.pid1_oom_killed or kill.pid1
            self.events.publish("oom", container.id, container.attributes(**extra))
            log.warning("oom_detected", killed_pid=kill.pid, pid1=kill.pid1,
                        count=state["CorralOomKillCount"])
        if (container.record["HostConfig"].get("CorralOomKillGroup")
                and run.cgroup.layout is not rt_cgroups.Layout.V2):
            # No memory.oom.group outside v2: the container dies together by
            # its PID 1's death, which ends its pid namespace.
            self._send_signal(container, run, signal.SIGKILL)

    def _on_pressure(self, container: Container, run: Run, resource: str, turn: str,
                     share: float) -> None:
        if turn == "act":
            self._act_on_pressure(container, run, resource, share)
            return
        if turn == "high":
            run.pressure_high.add(resource)
        else:
            run.pressure_high.discard(resource)
        action = "pressure_high" if turn == "high" else "pressure_cleared"
        self.events.publish(action, container.id, container.attributes(
            resource=resource, share=f"{share:.1f}"))
        log.info(action, resource=resource, share=round(share, 1))

    def _act_on_pressure(self, container, run: Run, resource: str, share: float):
        host = container.record["HostConfig"]
        rule = next(a for a in host.get("CorralPressureActions") or []
                    if a["Resource"] == resource)
        log.warning("pressure_action_taken", resource=resource, share=round(share, 1),
                    action=rule["Action"])
        if rule["Action"] == "stop":
            run.pressure_action = "stop"
            self._nursery.start_soon(self.stop, container, None)
            return
        run.pressure_action = rule["Action"]
        self._send_signal(container, run, signal.SIGKILL)

    def pressure_view(self, container: Container) -> dict:
        """State.CorralPressure of inspect: the live pressure files of the
        current run, and how they are watched."""
        view = {"Mode": self.pressure_mode.mode,
                "WindowSeconds": self.pressure_mode.window_s, "High": []}
        run = container.run
        if run is None or run.cgroup.dirs.unified is None:
            return view
        view["High"] = sorted(run.pressure_high)
        for resource in pressure_rules.RESOURCES:
            try:
                stalls = rt_pressure.read_pressure(run.cgroup.dirs.unified, resource)
            except (FileNotFoundError, OSError):
                continue
            view[resource.capitalize()] = {
                kind.capitalize(): stall.to_dict() for kind, stall in stalls.items()
            }
        return view

    async def _check_health(self, container, run: Run, check, scope) -> None:
        """Probe the run's health on the daemon's own scheduler, and act on it."""
        state = health.HealthState(retries=check.retries)
        self._show_health(container, state)
        started = trio.current_time()
        with scope:
            while True:
                in_start = (trio.current_time() - started < check.start_period_s
                            and state.status == "starting")
                await trio.sleep(check.start_interval_s if in_start else check.interval_s)
                result = await self._probe(container, check)
                in_start = trio.current_time() - started < check.start_period_s
                changed = state.record(result, in_start)
                self._show_health(container, state)
                if changed:
                    self.events.publish("health_status: " + changed, container.id,
                                        container.attributes())
                    log.info("health_changed", status=changed,
                             exit_code=result.exit_code)
                if changed == "unhealthy":
                    await self._act_on_unhealthy(container, run)

    async def _probe(self, container: Container, check) -> "health.ProbeResult":
        record = container.record
        inst = execs.ExecInstance(
            id="health", container=container, args=check.command(),
            env=record["Config"]["Env"], cwd=record["Config"]["WorkingDir"] or "/",
            user=record["Config"]["User"],
        )
        output = bytearray()

        async def keep(stream: str, data: bytes) -> None:
            room = health.MAX_OUTPUT_BYTES - len(output)
            if room > 0:
                output.extend(data[:room])

        start = now_rfc3339()
        try:
            code = await execs.run_exec(inst, keep, timeout_s=check.timeout_s)
        except Conflict:
            code = -1
        if inst.error.startswith("timed out"):
            code = -1
            output.extend(f"Health check exceeded timeout ({check.timeout_s:g}s)".encode())
        return health.ProbeResult(start, now_rfc3339(), code,
                                  output.decode("utf-8", "replace"))

    def _show_health(self, container: Container, state) -> None:
        container.state["Health"] = state.view()
        self._save(container)

    async def _act_on_unhealthy(self, container: Container, run: Run) -> None:
        action = container.record["HostConfig"].get("CorralHealthOnFailure") or "none"
        if action == "none":
            return
        log.warning("unhealthy_action", action=action)
        if action == "stop":
            self._nursery.start_soon(self.stop, container, None)
            return
        # restart and kill end the run without a manual stop, so the restart
        # policy (and for restart, its backoff and count) applies.
        run.unhealthy_action = action
        self._send_signal(container, run, signal.SIGKILL)

    async def _pump(self, container: Container, fd: int, stream: str) -> None:
        splitter = LineSplitter()
        pipe = trio.lowlevel.FdStream(fd)
        try:
            while data := await pipe.receive_some(READ_BYTES):
                for line in splitter.feed(data):
                    container.log.write(stream, line)
        finally:
            for line in splitter.flush():
                container.log.write(stream, line)
            await pipe.aclose()

    def _finish_run(self, container: Container, run: Run, status) -> None:
        container.run = None
        container.state.update(
            Status="exited",
            Running=False,
            Pid=0,
            ExitCode=status.exit_code,
            FinishedAt=now_rfc3339(),
        )
        manual = run.stop_requested or (
            run.killed_with is not None and status.signal == run.killed_with
        )
        termination = self._termination(container, run, status, manual)
        # The history keeps the last few runs; the counts keep every run.
        counts = _termination_counts(container.state)
        counts[termination["Reason"]] = counts.get(termination["Reason"], 0) + 1
        container.state["CorralTerminationCounts"] = counts
        history = container.state.get("CorralTerminations") or []
        container.state["CorralTerminations"] = [*history, termination][-MAX_TERMINATIONS:]
        state = self._restart_state(container)
        if manual:
            state = policy.manual_stop(state)
            self._set_restart_state(container, state)
        self._save(container)
        extra = {"reason": termination["Reason"]} if termination["Reason"] != "exit" else {}
        self.events.publish(
            "die", container.id, container.attributes(exitCode=status.exit_code, **extra)
        )
        log.info("container_exited", exit_code=status.exit_code, signal=status.signal,
                 requested=manual, reason=termination["Reason"])
        run.exited.set()
        old, container.exited = container.exited, trio.Event()
        old.set()
        container.log.wake()

    def _termination(self, container: Container, run: Run, status, manual: bool) -> dict:
        """One entry of State.CorralTerminations: how and why this run ended."""
        oom = container.state["OOMKilled"]
        if run.pressure_action:
            reason = "pressure"
        elif run.unhealthy_action:
            reason = "unhealthy"
        elif oom and status.signal == signal.SIGKILL and not manual:
            reason = "oom"
        elif status.signal:
            reason = "signal"
        else:
            reason = "exit"
        watch = run.watch
        return {
            "FinishedAt": now_rfc3339(),
            "ExitCode": status.exit_code,
            "Signal": signal.Signals(status.signal).name if status.signal else "",
            "OOMKilled": oom,
            "Reason": reason,
            "Requested": manual,
            "PeakMemoryBytes": rt_cgroups.memory_peak_bytes(run.cgroup.dirs),
            "PeakMemoryPressure": watch.peak_memory_pressure() if watch else 0.0,
        }

    async def _restart_after(self, container: Container, run: Run, status) -> Run | None:
        """Wait out the backoff and start the next run, or None to stop here.

        The run's cgroup is released (emptied and removed) at once when no
        restart follows. When one does, the cgroup is only emptied, and the
        next run reuses it: removing a cgroup costs an RCU grace period for
        each of its PSI triggers (some 5-15 ms apiece here), which a
        restart would otherwise wait for. A restart that does not happen
        after all (stop, rm, shutdown, a failed launch) releases it then.
        """
        if self._shutting_down or container.removing:
            self._spawn_release(run.cgroup, run.released)
            return None
        rules = policy.RestartPolicy.from_host_config(container.record["HostConfig"])
        if "restart" in (run.unhealthy_action, run.pressure_action) and rules.name == "no":
            # The user asked for restarts on failed health checks: they go
            # through the backoff and are counted like any other restart.
            rules = dataclasses.replace(rules, name="always")
        decision, state = policy.decide(
            rules,
            self._restart_state(container),
            exit_code=status.exit_code,
            run_duration_s=time.monotonic() - run.started_at_s,
            stop_requested=run.stop_requested,
            now_s=time.time(),
            rand=random.random(),
        )
        self._set_restart_state(container, state)
        if not decision.restart:
            self._spawn_release(run.cgroup, run.released)
            self._give_up(container, rules, decision)
            return None
        container.kept_run = run
        self._nursery.start_soon(self._empty_cgroup, run)
        try:
            return await self._wait_and_restart(container, decision)
        finally:
            if container.kept_run is run:
                self._release_kept_cgroup(container)

    async def _wait_and_restart(self, container: Container, decision) -> Run | None:
        self._mark_restarting(container, decision.delay_s)
        with trio.CancelScope() as scope:
            container.pending_restart = scope
            await trio.sleep(decision.delay_s)
        container.pending_restart = None
        if scope.cancelled_caught or container.removing:
            return None
        async with container.lock:
            state = self._restart_state(container)
            if (container.running or container.removing or self._shutting_down
                    or not state.restart_pending):
                return None
            state = policy.restarted(state, time.time())
            self._set_restart_state(container, state)
            container.record["RestartCount"] = state.restart_count
            # Saved before the launch: a daemon killed during it must not
            # forget a restart that the API already showed.
            self._save(container)
            try:
                return await self._launch(container)
            except (ServerError, BadParameter) as err:
                container.state.update(Restarting=False, Status="exited")
                self._save(container)
                container.log.wake()
                self.events.publish("restart_gave_up", container.id,
                                    container.attributes(reason=err.message))
                log.warning("restart_failed", error=err.message,
                            consequence="the container stays stopped")
                return None

    def _mark_restarting(self, container: Container, delay_s: float) -> None:
        container.state.update(Status="restarting", Restarting=True)
        self._save(container)
        self.events.publish("restart_scheduled", container.id,
                            container.attributes(delay=f"{delay_s:.3f}s"))
        log.info("restart_scheduled", delay_s=round(delay_s, 3),
                 attempt=container.record["RestartCount"] + 1)

    def _give_up(self, container: Container, rules, decision) -> None:
        if rules.name == "no" or not decision.reason or self._restart_state(
            container).manually_stopped:
            return
        if decision.reason.startswith("start limit") or "retry" in decision.reason:
            self.events.publish("restart_gave_up", container.id,
                                container.attributes(reason=decision.reason))
            log.info("restart_gave_up", reason=decision.reason)

    def _cancel_pending_restart(self, container: Container) -> bool:
        scope = container.pending_restart
        if scope is None:
            return False
        scope.cancel()
        container.pending_restart = None
        # Released now rather than when the waiting task wakes up, so that
        # a stop or rm right after sees the release it must wait for.
        self._release_kept_cgroup(container)
        container.state.update(Restarting=False, Status="exited")
        state = self._restart_state(container)
        self._set_restart_state(container, dataclasses.replace(state, next_restart_at_s=None))
        # A logs -f or attach follower waits for the restart that now never
        # comes.
        container.log.wake()
        return True

    def _restart_state(self, container: Container) -> "policy.RestartState":
        return policy.RestartState.from_dict(container.record.get("CorralRestartState") or {})

    def _set_restart_state(self, container: Container, state) -> None:
        container.record["CorralRestartState"] = state.to_dict()
        container.state["CorralRestart"] = _restart_view(state)

    def _spawn_release(self, cgroup, done: trio.Event,
                       after: trio.Event | None = None) -> None:
        """Remove the cgroup (after `after`, if given), then set `done`.

        Removing a cgroup waits for the kernel (an RCU grace period per PSI
        trigger, 10-30 ms in all): in a thread, so the die event, the restart
        decision, the replies to stop and rm and every other task go on
        meanwhile. Only the next start of the same container waits for it
        (_launch), and the daemon's shutdown. The cgroup is named after the
        container's id, which no other container can have.
        """
        self._releasing.add(done)
        self._nursery.start_soon(self._release_cgroup, cgroup, done, after)

    async def _release_cgroup(self, cgroup, done: trio.Event,
                              after: trio.Event | None) -> None:
        try:
            if after is not None:
                await after.wait()
            await trio.to_thread.run_sync(self._drop_cgroup, cgroup)
        finally:
            done.set()
            self._releasing.discard(done)

    async def _empty_cgroup(self, run: Run) -> None:
        """Make the run's cgroup ready for the next run: no process left in
        it, and its peak memory reset where the kernel allows."""
        try:
            await trio.to_thread.run_sync(self._recycle_cgroup, run.cgroup)
        finally:
            run.released.set()

    def _recycle_cgroup(self, cgroup) -> None:
        try:
            cgroup.kill()
            cgroup.reset_peak_memory()
        except rt_cgroups.CgroupError as err:
            log.warning("cgroup_cleanup_failed", error=str(err),
                        consequence="the next run's start may fail")

    def _release_kept_cgroup(self, container: Container) -> None:
        """Release the cgroup kept for a restart that will not happen."""
        run = container.kept_run
        if run is None:
            return
        container.kept_run = None
        done = trio.Event()
        container.cgroup_released = done
        self._spawn_release(run.cgroup, done, after=run.released)

    def _drop_cgroup(self, cgroup) -> None:
        try:
            cgroup.kill()
            cgroup.remove()
        except rt_cgroups.CgroupError as err:
            log.warning("cgroup_cleanup_failed", error=str(err),
                        consequence="an empty cgroup is left until removal")

    # ---- stop, kill, restart ---------------------------------------------------

    async def stop(self, container: Container, timeout_s: int | None,
                   manual: bool = True) -> None:
        """Stop signal, then SIGKILL after the timeout; also ends a backoff wait.

        A manual stop is remembered by the restart policy; the daemon's own
        stops at shutdown are not manual.
        """
        run = await self._settled_run(container)
        if run is None:
            if self._cancel_pending_restart(container):
                self._set_restart_state(
                    container, policy.manual_stop(self._restart_state(container)))
                self._save(container)
                self.events.publish("stop", container.id, container.attributes())
                return
            raise NotModified("container already stopped")
        if timeout_s is None:
            timeout_s = container.record["Config"].get(
                "StopTimeout", validation.DEFAULT_STOP_TIMEOUT_S
            )
        run.stop_requested = manual
        stop_signal = validation.parse_signal(container.record["Config"]["StopSignal"])
        self._send_signal(container, run, stop_signal)
        if timeout_s >= 0:
            with trio.move_on_after(timeout_s):
                await run.exited.wait()
        else:
            await run.exited.wait()
        if not run.exited.is_set():
            self._send_signal(container, run, signal.SIGKILL)
            await run.exited.wait()
        self.events.publish("stop", container.id, container.attributes())
        log.info("container_stopped", container=container.id)

    async def _settled_run(self, container: Container) -> Run | None:
        """The current run, once a start that is launching one has finished.

        A start (manual, automatic after the backoff, or on daemon start)
        holds the lock while it launches. A stop or rm arriving then must
        act on the new run, not find none and let it run on unstopped.
        """
        if container.run is None and container.lock.locked():
            async with container.lock:
                pass
        return container.run

    async def kill(self, container: Container, signal_value) -> None:
        """Send a signal; during a restart delay, any signal is a manual stop
        that cancels the pending restart (there is no process to signal)."""
        sig = validation.parse_signal(signal_value or "SIGKILL")
        run = await self._settled_run(container)
        if run is None and self._cancel_pending_restart(container):
            self._set_restart_state(
                container, policy.manual_stop(self._restart_state(container)))
            self._save(container)
            self.events.publish("kill", container.id,
                                container.attributes(signal=int(sig)))
            return
        if run is None:
            raise Conflict(f"Container {container.id} is not running")
        if sig == signal.SIGKILL:
            run.stop_requested = True
        run.killed_with = sig
        self._send_signal(container, run, sig)

    def _send_signal(self, container: Container, run: Run, sig: int) -> None:
        self.events.publish("kill", container.id, container.attributes(signal=int(sig)))
        try:
            signal.pidfd_send_signal(run.pidfd, sig)
        except ProcessLookupError:
            pass

    async def restart(self, container: Container, timeout_s: int | None) -> None:
        if container.running:
            await self.stop(container, timeout_s)
        await self.start(container)
        self.events.publish("restart", container.id, container.attributes())

    # ---- remove and wait -------------------------------------------------------

    async def remove(self, container: Container, force: bool) -> None:
        await self._settled_run(container)
        if container.removing:
            raise Conflict(f"removal of container {container.name} is already in progress")
        if container.running and not force:
            raise Conflict(
                f"You cannot remove a running container {container.id}. Stop the "
                "container before attempting removal or force remove"
            )
        container.removing = True
        self._cancel_pending_restart(container)
        if container.run is not None:
            run = container.run
            self._send_signal(container, run, signal.SIGKILL)
            await run.exited.wait()
        # Its cgroup's removal, if still under way, goes on after the reply.
        async with container.lock:
            self._forget(container)
        await trio.to_thread.run_sync(_remove_tree, container.directory)

    def _forget(self, container: Container) -> None:
        self.store.delete_container(container.id)
        self.stats.forget(container.id)
        self.containers.pop(container.id, None)
        if self.names.get(container.name) == container.id:
            del self.names[container.name]
        container.log.close()
        container.log.wake()
        # Move the directory out of the way now so its id can never be seen
        # half-deleted; the slow recursive delete happens after.
        trash = container.directory.with_name(".trash-" + container.id)
        try:
            container.directory.rename(trash)
            container.directory = trash
        except FileNotFoundError:
            pass
        self.events.publish("destroy", container.id, container.attributes())
        log.info("container_removed", container=container.id)
        container.removed.set()
        old, container.exited = container.exited, trio.Event()
        old.set()

    async def wait(self, container: Container, condition: str) -> int:
        check_wait_condition(condition)
        if condition == "removed":
            await container.removed.wait()
        elif condition == "next-exit" or container.running:
            await container.exited.wait()
        return container.state["ExitCode"]

    # ---- exec ------------------------------------------------------------------

    def exec_create(self, container: Container, body: dict) -> "execs.ExecInstance":
        if container.run is None:
            raise Conflict(f"Container {container.id} is not running")
        inst = execs.new_exec(container, body)
        self._prune_execs()
        self.execs[inst.id] = inst
        self.events.publish("exec_create: " + " ".join(inst.args), container.id,
                            container.attributes(execID=inst.id))
        return inst

    def find_exec(self, exec_id: str) -> "execs.ExecInstance":
        inst = self.execs.get(exec_id)
        if inst is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return inst

    def exec_start(self, inst, output, on_done=None) -> None:
        """Run the instance in the daemon's nursery, so it outlives its client."""
        container = inst.container
        self.events.publish("exec_start: " + " ".join(inst.args), container.id,
                            container.attributes(execID=inst.id))

        async def run():
            try:
                code = await execs.run_exec(inst, output)
                self.events.publish("exec_die", container.id,
                                    container.attributes(execID=inst.id, exitCode=code))
            except Conflict as err:
                inst.error = err.message
            except Exception as err:
                # One exec's fault must never take the daemon down with it.
                log.exception("exec_failed", exec_id=inst.id)
                inst.error = f"exec failed in corrald: {err}"
                if inst.exit_code is None:
                    inst.exit_code = 126
            finally:
                if on_done is not None:
                    on_done()

        self._nursery.start_soon(run)

    def _prune_execs(self) -> None:
        finished = [i for i in self.execs.values() if i.done.is_set()]
        for inst in finished[: max(0, len(finished) - execs.MAX_FINISHED_EXECS)]:
            del self.execs[inst.id]

    # ---- read-only view for metrics ------------------------------------------

    def metric_targets(self) -> list[Target]:
        """A snapshot of every container for one scrape, made on the event
        loop; the collector reads the cgroup files from it elsewhere."""
        return [self._metric_target(c) for c in self.containers.values()]

    def _metric_target(self, container: Container) -> Target:
        run = container.run
        record, state = container.record, container.state
        health = (state.get("Health") or {}).get("Status") if run else None
        return Target(
            cgroup_id=f"/{self.config.cgroup_parent}/{container.id}",
            name=container.name,
            image=record["Config"]["Image"],
            cgroup=run.cgroup.dirs if run is not None else None,
            started_at_s=_unix_s(state["StartedAt"]),
            labels=dict(record["Config"].get("Labels") or {}),
            oom_kills=state.get("CorralOomKillCount", 0),
            pid1=run.pid if run is not None else None,
            own_network=record["HostConfig"]["NetworkMode"] != "host",
            state="removing" if container.removing else state["Status"],
            restarts=record["RestartCount"],
            last_exit_code=_last_exit_code(state),
            terminations=_termination_counts(state),
            backoff_s=(state.get("CorralRestart") or {}).get("BackoffDelaySeconds", 0),
            health=health or None,
            gave_up=bool((state.get("CorralRestart") or {}).get("GaveUpReason")),
        )

    def event_counts(self) -> dict[str, int]:
        """Events published so far, by action (up to any colon)."""
        return dict(self.events.counts)

    # ---- helpers ---------------------------------------------------------------

    def _save(self, container: Container) -> None:
        if container.id in self.containers:
            self.store.save_container(container.record)


async def _in_scope(scope: trio.CancelScope, *functions) -> None:
    """Run the functions side by side until they end or scope is cancelled."""
    with scope:
        async with trio.open_nursery() as nursery:
            for fn in functions:
                nursery.start_soon(fn)


def _with_hostname(env: list[str], hostname: str) -> list[str]:
    """Docker sets HOSTNAME for the container unless the user did."""
    if any(item.startswith("HOSTNAME=") for item in env):
        return env
    return [*env, f"HOSTNAME={hostname}"]


@functools.lru_cache(maxsize=4096)
def _unix_s(stamp: str) -> float:
    # Cached: a scrape asks for every container's StartedAt, on the loop.
    return parse_time_ns(stamp) / 1e9


def _termination_counts(state: dict) -> dict[str, int]:
    """State.CorralTerminationCounts: ended runs by reason over the whole
    life; a record from before it was kept counts its history instead."""
    counts = state.get("CorralTerminationCounts")
    if counts is None:
        counts = {}
        for termination in state.get("CorralTerminations") or []:
            counts[termination["Reason"]] = counts.get(termination["Reason"], 0) + 1
    return dict(counts)


def _last_exit_code(state: dict) -> int:
    """The exit code of the last run that ended, also while the next one
    runs (State.ExitCode is 0 then); 0 before any run ended."""
    if not state["Running"]:
        return state["ExitCode"]
    history = state.get("CorralTerminations") or []
    return history[-1]["ExitCode"] if history else 0


def _restart_view(state) -> dict:
    """What inspect shows of the restart policy's state (State.CorralRestart)."""
    return {
        "ManuallyStopped": state.manually_stopped,
        "BackoffDelaySeconds": round(state.current_delay_s, 3),
        "NextRestartAt": _wall_rfc3339(state.next_restart_at_s),
        "GaveUpReason": state.gave_up_reason or "",
        "GaveUpAt": _wall_rfc3339(state.gave_up_at_s),
    }


def _wall_rfc3339(unix_s: float | None) -> str:
    from .logs import format_time_ns

    return format_time_ns(int(unix_s * 1e9)) if unix_s else ZERO_TIME


def check_wait_condition(condition: str) -> None:
    if condition not in WAIT_CONDITIONS:
        raise BadParameter(
            f"invalid wait condition {condition!r}: use one of "
            + ", ".join(WAIT_CONDITIONS)
        )


def _limits(host: dict) -> "rt_cgroups.Limits":
    quota, period = host.get("CpuQuota") or None, host.get("CpuPeriod") or None
    if host.get("NanoCpus"):
        period = 100_000
        quota = host["NanoCpus"] * period // 1_000_000_000
    swap = host.get("MemorySwap") or None
    pids = host.get("PidsLimit")
    return rt_cgroups.Limits(
        memory_bytes=host.get("Memory") or None,
        memory_swap_bytes=swap if host.get("Memory") else None,
        cpu_quota_us=quota,
        cpu_period_us=period,
        pids_max=pids if pids and pids > 0 else None,
        oom_group=bool(host.get("CorralOomKillGroup")),
    )


def _network_settings(mode: str) -> dict:
    endpoint = {
        "NetworkID": mode,
        "EndpointID": "",
        "Gateway": "",
        "IPAddress": "",
        "IPPrefixLen": 0,
        "MacAddress": "",
    }
    return {
        "Bridge": "",
        "SandboxID": "",
        "SandboxKey": "",
        "Ports": {},
        "IPAddress": "",
        "Gateway": "",
        "MacAddress": "",
        "Networks": {mode: endpoint},
    }


def _read_host_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _without_loopback(resolv: str) -> str:
    kept = []
    for line in resolv.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and (
            words[1].startswith("127.") or words[1] == "::1"
        ):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n" if kept else ""


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
