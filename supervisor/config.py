"""Daemon settings: command-line flags win over CORRAL_* environment variables,
which win over the TOML config file, which wins over the defaults."""

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_CONFIG_FILE = Path("/etc/corral/corrald.toml")
DEFAULT_METRICS_ADDR = "127.0.0.1:9323"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Settings for which an empty value means something (off), rather than unset.
_EMPTY_MEANS_OFF = ("metrics_addr",)


class ConfigError(Exception):
    pass


@dataclass
class DaemonConfig:
    socket: Path = Path("/run/corral/corral.sock")
    root: Path = Path("/var/lib/corral")
    log_level: str = "info"
    cgroup_parent: str = "corral"
    socket_group: str = "corral"
    # The init that --init runs as PID 1 (Debian's tini package ships it).
    init_path: Path = Path("/usr/bin/tini-static")
    # HOST:PORT of the Prometheus endpoint (GET /metrics over TCP); "" turns
    # it off. None is the default address, which corrald gives up with a
    # warning when something else holds it; an address that is set must work.
    metrics_addr: str | None = None


def load_config(flags: dict, environ=os.environ) -> DaemonConfig:
    """Merge defaults, the config file, the environment and flags, in that order."""
    path = flags.get("config") or environ.get("CORRAL_CONFIG")
    merged: dict = {}
    merged.update(_read_file(Path(path) if path else DEFAULT_CONFIG_FILE, bool(path)))
    merged.update(_from_environ(environ))
    merged.update({k: v for k, v in flags.items() if v is not None and k != "config"})
    return _build(merged)


def _read_file(path: Path, required: bool) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err


def _from_environ(environ) -> dict:
    names = [f.name for f in fields(DaemonConfig)]
    found = {n: environ.get("CORRAL_" + n.upper()) for n in names}
    return {k: v for k, v in found.items()
            if v or (k in _EMPTY_MEANS_OFF and v is not None)}


def _build(values: dict) -> DaemonConfig:
    known = {f.name: f.type for f in fields(DaemonConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    config = DaemonConfig(**values)
    config.socket = Path(config.socket)
    config.root = Path(config.root)
    config.init_path = Path(config.init_path)
    config.log_level = str(config.log_level).lower()
    if config.metrics_addr is not None:
        config.metrics_addr = _metrics_addr(str(config.metrics_addr))
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"log level {config.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
        )
    return config


def parse_listen_addr(text: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" or "[IPV6]:PORT"; port 0 lets the kernel
    choose."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"metrics address {text!r} is not HOST:PORT; give one such as "
            f"{DEFAULT_METRICS_ADDR}, [::1]:9323 or 0.0.0.0:9323, or none to "
            "turn the Prometheus endpoint off"
        )
    return host, int(port)


def _metrics_addr(text: str) -> str:
    text = text.strip()
    if text.lower() in ("", "none"):
        return ""
    parse_listen_addr(text)
    return text
