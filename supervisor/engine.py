"""Container lifecycle: create, start, stop, kill, restart, remove, wait.

One supervision task per running container waits on its PID 1's pidfd (no
polling), pumps its stdout and stderr into the json-file log, and records the
exit. The record is written to the store before anything is started and after
every transition, so a daemon restart finds every container as it last was.
"""

import os
import secrets
import shutil
import signal
from pathlib import Path

import structlog
import trio

from runtime import cgroups as rt_cgroups
from runtime import images as rt_images
from runtime import process as rt_process
from metrics.collector import Target

from . import names, validation
from .config import DaemonConfig
from .container import ZERO_TIME, Container, Run, new_state, now_rfc3339
from .errors import BadParameter, Conflict, NotFound, NotModified, ServerError
from .errors import no_such_container
from .events import EventBus
from .logs import LineSplitter, LogWriter, parse_time_ns
from .store import Store

log = structlog.get_logger()

HELPER_TIMEOUT_S = 30
PUMP_DRAIN_S = 2
READ_BYTES = 64 * 1024
WAIT_CONDITIONS = ("not-running", "next-exit", "removed")
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
        self._dir = config.root / "containers"

    # ---- set-up and shutdown -------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Own every supervision task; started once per daemon."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._load()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

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
        # host agree, and the exit is recorded as a daemon-side failure.
        try:
            cgroup = self.cgroups.open(container.id)
            cgroup.kill()
            cgroup.remove()
        except (rt_cgroups.CgroupError, FileNotFoundError) as err:
            log.warning("cgroup_cleanup_failed", container=container.id, error=str(err))
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

    def _remove_leftovers(self) -> None:
        for name in self.cgroups.names():
            if name not in self.containers:
                try:
                    cgroup = self.cgroups.open(name)
                    cgroup.kill()
                    cgroup.remove()
                except rt_cgroups.CgroupError as err:
                    log.warning("cgroup_cleanup_failed", name=name, error=str(err))
        for entry in self._dir.iterdir():
            if entry.name not in self.containers:
                shutil.rmtree(entry, ignore_errors=True)

    async def shutdown(self) -> None:
        """Stop every running container, each with its own stop timeout."""
        async with trio.open_nursery() as nursery:
            for container in list(self.containers.values()):
                if container.running:
                    nursery.start_soon(self.stop, container, None)

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
        async with container.lock:
            if container.removing:
                raise Conflict(f"container {container.name} is being removed")
            if container.running:
                raise NotModified("container already started")
            await self._start_run(container)

    async def _start_run(self, container: Container) -> None:
        spec, cgroup = self._prepare(container)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            spawned = rt_process.spawn_init(spec, out_w, err_w)
        except OSError as err:
            for fd in (out_r, err_r):
                os.close(fd)
            self._drop_cgroup(cgroup)
            raise ServerError(f"cannot start container {container.name}: {err}") from err
        finally:
            os.close(out_w)
            os.close(err_w)
        result = await self._collect_start(spawned)
        if result.error:
            for fd in (out_r, err_r):
                os.close(fd)
            await self._fail_start(container, result, cgroup)
        run = Run(result.pid, os.pidfd_open(result.pid), cgroup)
        container.run = run
        container.state.update(
            Status="running",
            Running=True,
            Pid=run.pid,
            ExitCode=0,
            Error="",
            OOMKilled=False,
            StartedAt=now_rfc3339(),
            FinishedAt=ZERO_TIME,
        )
        self._save(container)
        self.events.publish("start", container.id, container.attributes())
        log.info("container_started", container=container.id, pid=run.pid)
        container.log.wake()
        self._nursery.start_soon(self._supervise, container, run, out_r, err_r, cgroup)

    def _prepare(self, container: Container):
        record = container.record
        image = self._image(record["Image"])
        layers = [str(p) for p in self.images.layer_dirs(image)]
        directory = container.directory
        for sub in ("upper", "work", "rootfs"):
            (directory / sub).mkdir(exist_ok=True)
        network = record["HostConfig"]["NetworkMode"]
        self._write_etc_files(container, network)
        try:
            cgroup = self.cgroups.create(container.id, _limits(record["HostConfig"]))
        except rt_cgroups.CgroupError as err:
            raise ServerError(f"cannot start container {container.name}: {err}") from err
        spec = rt_process.InitSpec(
            args=[record["Path"], *record["Args"]],
            env=record["Config"]["Env"],
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
            data = await _read_to_eof(spawned.status_fd)
            await _wait_process(spawned.helper)
        if scope.cancelled_caught:
            spawned.helper.kill()
            await _wait_process(spawned.helper)
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
            await _reap(result.pid)
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

    async def _supervise(self, container, run: Run, out_r, err_r, cgroup) -> None:
        structlog.contextvars.bind_contextvars(container=container.id)
        try:
            await self._supervise_run(container, run, out_r, err_r, cgroup)
        except Exception:
            # One container's failure must never take the daemon down with it.
            log.exception("supervision_failed")

    async def _supervise_run(self, container, run, out_r, err_r, cgroup) -> None:
        async with trio.open_nursery() as pumps:
            pumps.start_soon(self._pump, container, out_r, "stdout")
            pumps.start_soon(self._pump, container, err_r, "stderr")
            await trio.lowlevel.wait_readable(run.pidfd)
            status = rt_process.exit_status(run.pidfd)
            # PID 1's death tears down its pid namespace, so the pipes close
            # promptly; the deadline only guards against a stray holder.
            pumps.cancel_scope.deadline = trio.current_time() + PUMP_DRAIN_S
        os.close(run.pidfd)
        self._drop_cgroup(cgroup)
        self._finish_run(container, run, status)
        if container.record["HostConfig"]["AutoRemove"] and not container.removing:
            await self.remove(container, force=True)

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
        self._save(container)
        self.events.publish(
            "die", container.id, container.attributes(exitCode=status.exit_code)
        )
        log.info("container_exited", exit_code=status.exit_code, signal=status.signal)
        run.exited.set()
        old, container.exited = container.exited, trio.Event()
        old.set()
        container.log.wake()

    def _drop_cgroup(self, cgroup) -> None:
        try:
            cgroup.kill()
            cgroup.remove()
        except rt_cgroups.CgroupError as err:
            log.warning("cgroup_cleanup_failed", error=str(err),
                        consequence="an empty cgroup is left until removal")

    # ---- stop, kill, restart ---------------------------------------------------

    async def stop(self, container: Container, timeout_s: int | None) -> None:
        run = container.run
        if run is None:
            raise NotModified("container already stopped")
        if timeout_s is None:
            timeout_s = container.record["Config"].get(
                "StopTimeout", validation.DEFAULT_STOP_TIMEOUT_S
            )
        run.stop_requested = True
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

    async def kill(self, container: Container, signal_value) -> None:
        sig = validation.parse_signal(signal_value or "SIGKILL")
        run = container.run
        if run is None:
            raise Conflict(f"Container {container.id} is not running")
        if sig == signal.SIGKILL:
            run.stop_requested = True
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
        if container.removing:
            raise Conflict(f"removal of container {container.name} is already in progress")
        if container.running and not force:
            raise Conflict(
                f"You cannot remove a running container {container.id}. Stop the "
                "container before attempting removal or force remove"
            )
        container.removing = True
        if container.run is not None:
            run = container.run
            self._send_signal(container, run, signal.SIGKILL)
            await run.exited.wait()
        async with container.lock:
            self._forget(container)
        await trio.to_thread.run_sync(_remove_tree, container.directory)

    def _forget(self, container: Container) -> None:
        self.store.delete_container(container.id)
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

    # ---- read-only view for metrics ------------------------------------------

    def metric_targets(self) -> list[Target]:
        targets = []
        for container in self.containers.values():
            run = container.run
            if run is None:
                continue
            record = container.record
            targets.append(Target(
                cgroup_id=f"/{self.config.cgroup_parent}/{container.id}",
                name=container.name,
                image=record["Config"]["Image"],
                cgroup=run.cgroup.dirs,
                started_at_s=parse_time_ns(container.state["StartedAt"]) / 1e9,
                memory_limit_bytes=record["HostConfig"]["Memory"],
            ))
        return targets

    # ---- helpers ---------------------------------------------------------------

    def _save(self, container: Container) -> None:
        if container.id in self.containers:
            self.store.save_container(container.record)


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


async def _read_to_eof(fd: int) -> bytes:
    chunks = []
    try:
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, READ_BYTES)
            except BlockingIOError:
                continue
            if not data:
                return b"".join(chunks)
            chunks.append(data)
    finally:
        os.close(fd)


async def _wait_process(popen) -> None:
    pidfd = os.pidfd_open(popen.pid)
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    popen.wait()


async def _reap(pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
        rt_process.exit_status(pidfd)
    finally:
        os.close(pidfd)
