"""corrald: the daemon's entry point, locks, and orderly shutdown."""

import argparse
import fcntl
import os
import signal
import socket
import sys
from pathlib import Path

import structlog
import trio

from . import __version__
from .config import (
    DEFAULT_METRICS_ADDR,
    ConfigError,
    DaemonConfig,
    load_config,
    parse_listen_addr,
)
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


def bind_metrics(config: DaemonConfig) -> socket.socket | None:
    """The listening socket of the Prometheus endpoint; None when it is
    turned off, or when the default address is taken (logged): metrics
    stay on the API socket then. A configured address that cannot be
    bound stops the daemon from starting."""
    addr = config.metrics_addr
    if addr == "":
        log.info("metrics_listener_disabled")
        return None
    host, port = parse_listen_addr(addr or DEFAULT_METRICS_ADDR)
    try:
        return _listen_tcp(host, port)
    except OSError as err:
        reason = os.strerror(err.errno).lower() if err.errno else str(err)
        if addr is None:
            log.warning("metrics_listen_failed", addr=DEFAULT_METRICS_ADDR,
                        error=reason, consequence="Prometheus can scrape GET "
                        "/metrics on the API socket only")
            return None
        raise UsageError(
            f"cannot listen for Prometheus on {addr}: {reason}; free that "
            "address, or set another with --metrics-addr (metrics_addr), or "
            "none to turn the endpoint off"
        ) from err


def _listen_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _metrics_handler(exporter):
    """The Prometheus endpoint's handler: GET /metrics, nothing else."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from .server import Response

    async def handle(request):
        if request.path != "/metrics":
            return Response(404, b"404 page not found\n", "text/plain; charset=utf-8")
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"405 method not allowed: use GET\n",
                            "text/plain; charset=utf-8", [("Allow", "GET, HEAD")])
        return Response(200, await exporter.render(), CONTENT_TYPE_LATEST)

    return handle


async def serve(config: DaemonConfig,
                metrics_sock: socket.socket | None = None) -> None:
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
        api = Api(engine)
        listener = server.listen_unix(config.socket, config.socket_group)
        metrics_listener = None
        if metrics_sock is not None:
            metrics_listener = trio.socket.from_stdlib_socket(metrics_sock)
        api_done = trio.Event()

        async def serve_api():
            try:
                await server.serve(listener, api)
            finally:
                api_done.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await nursery.start(api.exporter.loop_lag.run)
            nursery.start_soon(serve_api)
            if metrics_listener is not None:
                nursery.start_soon(server.serve, metrics_listener,
                                   _metrics_handler(api.exporter))
                host, port = metrics_sock.getsockname()[:2]
                log.info("metrics_listening", addr=_format_addr(host, port))
            log.info("daemon_started", path=str(config.socket), version=__version__,
                     cgroup_layout=cgroups.layout.value, pid=os.getpid())
            async for signum in signals:
                log.info("daemon_stopping", signal=signal.Signals(signum).name)
                break
            listener.close()
            if metrics_listener is not None:
                metrics_listener.close()
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


def _format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    parser.add_argument("--metrics-addr", metavar="HOST:PORT",
                        help="Prometheus endpoint, or none to turn it off "
                        f"[default: {DEFAULT_METRICS_ADDR}]")
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
        # Bound before anything starts, so a taken address stops corrald
        # with the error on its stderr.
        metrics_sock = bind_metrics(config)
        trio.run(serve, config, metrics_sock)
    except UsageError:
        raise
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
