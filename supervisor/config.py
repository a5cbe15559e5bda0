"""Daemon settings: command-line flags win over CORRAL_* environment variables,
which win over the TOML config file, which wins over the defaults."""

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_CONFIG_FILE = Path("/etc/corral/corrald.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")


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
    return {k: v for k, v in found.items() if v}


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
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"log level {config.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
        )
    return config
