"""corrald: the daemon's entry point, locks, and orderly shutdown."""

import argparse
import fcntl
import os
import signal
import sys
from pathlib import Path

import structlog
import trio

from . import __version__
from .config import ConfigError, DaemonConfig, load_config
from .logsetup import configure_logging

log = structlog.get_logger()

SHUTDOWN_GRACE_S = 1.0


class AlreadyRunning(Exception):
    pass


def acquire_lock(path: Path) -> int:
    """Hold an exclusive lock on `path` for the life of the process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode().strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"another corrald (pid {holder}) holds {path}; stop it first, or give "
            "this one its own --root and --socket"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


async def serve(config: DaemonConfig) -> None:
    from runtime import _sys
    from runtime import process as rt_process
    from runtime.cgroups import CgroupManager
    from runtime.images import ImageStore

    from . import server
    from .api import Api
    from .engine import Engine
    from .events import EventBus
    from .store import Store

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        # Orphaned container processes must come back to the daemon, not to
        # the host's init, so their exit status can be collected.
        _sys.set_child_subreaper()
        # The helper server forks every container's init helper; started
        # after the flag above, so that what it forks comes back here too.
        rt_process.start_server(
            on_fallback=lambda message: log.warning("helper_server_failed",
                                                    error=message))
        store = Store(config.root / "corral.db")
        cgroups = CgroupManager(parent=config.cgroup_parent)
        cgroups.setup()
        engine = Engine(config, store, ImageStore(config.root / "images"), cgroups,
                        EventBus())
        listener = server.listen_unix(config.socket, config.socket_group)
        api_done = trio.Event()

        async def serve_api():
            try:
                await server.serve(listener, Api(engine))
            finally:
                api_done.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            nursery.start_soon(serve_api)
            log.info("daemon_started", path=str(config.socket), version=__version__,
                     cgroup_layout=cgroups.layout.value, pid=os.getpid())
            async for signum in signals:
                log.info("daemon_stopping", signal=signal.Signals(signum).name)
                break
            listener.close()
            await engine.shutdown()
            # Replies the stops have just completed (wait, logs -f) get a
            # moment to finish sending; idle keep-alive connections are cut.
            with trio.move_on_after(SHUTDOWN_GRACE_S):
                await api_done.wait()
            nursery.cancel_scope.cancel()
        rt_process.stop_server()
        store.close()
        config.socket.unlink(missing_ok=True)
        log.info("daemon_stopped")


class UsageError(Exception):
    """A reason corrald cannot start, printed as `corrald: error: ...`."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corrald",
        description="Run the corral daemon: containers, images and the Docker-shaped API.",
        epilog="Flags win over CORRAL_* environment variables, which win over the config file.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config file [default: /etc/corral/corrald.toml]")
    parser.add_argument("--socket", metavar="PATH", help="API socket path [default: /run/corral/corral.sock]")
    parser.add_argument("--root", metavar="DIR", help="state directory [default: /var/lib/corral]")
    parser.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error [default: info]")
    parser.add_argument("--cgroup-parent", metavar="NAME", help="parent cgroup for containers [default: corral]")
    parser.add_argument("--version", action="version", version=f"corrald, version {__version__}")
    return parser


def _start(flags: dict) -> None:
    try:
        config = load_config(flags)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    configure_logging(config.log_level)
    if os.geteuid() != 0:
        raise UsageError("corrald must run as root: it creates namespaces, mounts and cgroups")
    try:
        config.root.mkdir(parents=True, exist_ok=True, mode=0o711)
        locks = [acquire_lock(config.root / "corrald.lock"),
                 acquire_lock(config.socket.with_name(config.socket.name + ".lock"))]
    except AlreadyRunning as err:
        raise UsageError(str(err)) from None
    try:
        trio.run(serve, config)
    except Exception as err:
        log.exception("daemon_failed", error=str(err))
        sys.exit(1)
    finally:
        for fd in locks:
            os.close(fd)


def main(argv: list[str] | None = None) -> None:
    """Run the corral daemon: containers, images and the Docker-shaped API."""
    parser = _parser()
    flags = vars(parser.parse_args(argv))
    try:
        _start(flags)
    except UsageError as err:
        parser.exit(1, f"corrald: error: {err}\n")


if __name__ == "__main__":
    main()
