"""Checks a create request and merges it with the image config.

Everything is validated here, before anything is written or started, so a bad
request is answered with a 400 that names the field and leaves nothing behind.
Pure logic: no I/O, no trio.
"""

import re
import signal as _signal
from dataclasses import dataclass

from . import health, policy, pressure
from .errors import BadParameter
from .units import parse_size

NAME_PATTERN = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
MIN_MEMORY_BYTES = 6 * 1024 * 1024
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
NETWORK_MODES = {"": "none", "default": "none", "none": "none", "host": "host"}
DEFAULT_STOP_TIMEOUT_S = 10
DEFAULT_LOG_MAX_SIZE = "20m"
DEFAULT_LOG_MAX_FILE = "5"

# HostConfig fields corral does not implement yet, with the zero value that
# means "not asked for". A request that sets one is refused rather than
# silently ignored.
_UNSUPPORTED_HOST_FIELDS = {
    "Binds": "bind mounts (-v)",
    "Mounts": "mounts (--mount)",
    "PortBindings": "published ports (-p)",
    "PublishAllPorts": "published ports (-P)",
    "Privileged": "privileged mode (--privileged)",
    "CapAdd": "added capabilities (--cap-add)",
    "Devices": "devices (--device)",
    "VolumesFrom": "--volumes-from",
    "Links": "links (--link)",
}
_UNSUPPORTED_CONFIG_FIELDS = {
    "Tty": "a TTY (-t)",
    "OpenStdin": "an open stdin (-i)",
}


@dataclass
class ContainerSpec:
    """A validated create request, merged with its image's config."""

    name: str
    config: dict
    host_config: dict
    path: str
    args: list[str]


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise BadParameter(
            f'Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are '
            "allowed and it needs at least two characters"
        )
    return name.lstrip("/")


def build_spec(body: dict, name: str, image_config: dict, host_cpus: int) -> ContainerSpec:
    """Validate `body` (Docker's ContainerConfig) and merge it with the image."""
    if not isinstance(body, dict):
        raise BadParameter("request body must be a JSON object")
    _refuse_unsupported(body, _UNSUPPORTED_CONFIG_FIELDS, "Config")
    host = dict(body.get("HostConfig") or {})
    _refuse_unsupported(host, _UNSUPPORTED_HOST_FIELDS, "HostConfig")
    config = _merge_config(body, image_config)
    command = (config["Entrypoint"] or []) + (config["Cmd"] or [])
    if not command:
        raise BadParameter(
            "no command specified: the image has no Cmd or Entrypoint; "
            "give a command after the image name"
        )
    _check_process_fields(config, command)
    host_config = _check_host_config(host, host_cpus)
    return ContainerSpec(name, config, host_config, command[0], command[1:])


_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def _check_process_fields(config: dict, command: list[str]) -> None:
    """What the container's PID 1 gets: refused here, before anything is
    made, rather than at start."""
    workdir = config["WorkingDir"]
    if not isinstance(workdir, str) or (workdir and not workdir.startswith("/")):
        raise BadParameter(
            f"the working directory {workdir!r} is invalid: it needs to be an "
            "absolute path (-w /path)"
        )
    hostname = config["Hostname"]
    if not isinstance(hostname, str) or (hostname and not _HOSTNAME.fullmatch(hostname)):
        raise BadParameter(
            f"invalid hostname {hostname!r}: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit, at most 63 characters"
        )
    if not isinstance(config["User"], str):
        raise BadParameter(f"User must be a string, not {config['User']!r}")
    for text in [*command, *config["Env"], workdir, config["User"]]:
        if "\0" in text:
            raise BadParameter(f"invalid container setting {text!r}: holds a NUL byte")


def _refuse_unsupported(doc: dict, fields: dict, where: str) -> None:
    for field_name, what in fields.items():
        if doc.get(field_name):
            raise BadParameter(
                f"{what} ({where}.{field_name}) is not supported by this version of "
                "corral; remove it from the request"
            )


def _string_list(value, field_name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadParameter(f"{field_name} must be a list of strings")
    return value


def _merge_config(body: dict, image: dict) -> dict:
    entrypoint = _string_list(body.get("Entrypoint"), "Entrypoint")
    cmd = _string_list(body.get("Cmd"), "Cmd")
    if entrypoint is not None:
        # An entrypoint given by the user discards the image's command too.
        cmd = cmd or []
    else:
        entrypoint = image.get("Entrypoint") or []
        cmd = cmd if cmd else image.get("Cmd") or []
    env = _merge_env(image.get("Env") or [], _string_list(body.get("Env"), "Env") or [])
    labels = {**(image.get("Labels") or {}), **_labels(body.get("Labels"))}
    return {
        "Hostname": body.get("Hostname") or "",
        "Domainname": body.get("Domainname") or "",
        "User": body.get("User") or image.get("User") or "",
        "AttachStdin": False,
        "AttachStdout": bool(body.get("AttachStdout")),
        "AttachStderr": bool(body.get("AttachStderr")),
        "ExposedPorts": body.get("ExposedPorts") or image.get("ExposedPorts") or None,
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": env,
        "Cmd": cmd,
        "Image": body.get("Image") or "",
        "Volumes": None,
        "WorkingDir": body.get("WorkingDir") or image.get("WorkingDir") or "",
        "Entrypoint": entrypoint or None,
        "OnBuild": None,
        "Labels": labels,
        "Healthcheck": _healthcheck(body.get("Healthcheck"), image.get("Healthcheck")),
        "StopSignal": _check_signal(
            body.get("StopSignal") or image.get("StopSignal") or "SIGTERM",
            "StopSignal",
        ),
        **_stop_timeout(body.get("StopTimeout")),
    }


def _healthcheck(requested, from_image):
    try:
        health.check_healthcheck(requested)
    except ValueError as err:
        raise BadParameter(str(err)) from None
    return health.merge_healthcheck(requested, from_image)


def _stop_timeout(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, int) or value < -1:
        raise BadParameter(
            f"invalid StopTimeout {value!r}: give whole seconds, or -1 to wait forever"
        )
    return {"StopTimeout": value}


def _labels(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadParameter("Labels must be an object of string keys and values")
    return value


def _merge_env(image_env: list[str], request_env: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for item in image_env + request_env:
        key, sep, _ = item.partition("=")
        if not key:
            raise BadParameter(f"invalid environment variable {item!r}: empty name")
        merged[key] = item if sep else f"{key}="
    return list(merged.values())


def parse_signal(value) -> int:
    """Signal number from 9, "9", "KILL" or "SIGKILL"; raises BadParameter."""
    text = str(value).strip().upper()
    if text.isdigit():
        number = int(text)
        if 0 < number < _signal.NSIG:
            return number
    else:
        name = text if text.startswith("SIG") else "SIG" + text
        found = getattr(_signal.Signals, name, None) if name.isidentifier() else None
        if found is not None:
            return int(found)
    raise BadParameter(
        f"invalid signal {value!r}: use a name like SIGTERM or TERM, or a number"
    )


def _check_signal(value, field_name: str) -> str:
    try:
        parse_signal(value)
    except BadParameter as err:
        raise BadParameter(f"{field_name}: {err.message}") from None
    return str(value)


def _int_field(host: dict, field_name: str) -> int:
    value = host.get(field_name) or 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadParameter(f"HostConfig.{field_name} must be an integer")
    return value


def _check_host_config(host: dict, host_cpus: int) -> dict:
    memory = _check_memory(host)
    swap = _check_swap(host, memory)
    nano_cpus, quota, period = _check_cpu(host, host_cpus)
    pids = _check_pids(host)
    restart = check_restart_policy(host.get("RestartPolicy"), bool(host.get("AutoRemove")))
    try:
        policy.validate_extensions(host)
    except ValueError as err:
        raise BadParameter(str(err)) from None
    try:
        pressure_config = pressure.PressureConfig.from_host_config(host)
    except ValueError as err:
        raise BadParameter(str(err)) from None
    oom_group = host.get("CorralOomKillGroup") or False
    if not isinstance(oom_group, bool):
        raise BadParameter("HostConfig.CorralOomKillGroup must be true or false")
    on_failure = host.get("CorralHealthOnFailure") or "none"
    if on_failure not in health.ACTIONS:
        raise BadParameter(
            f"invalid health action {on_failure!r} (CorralHealthOnFailure): use one "
            "of " + ", ".join(health.ACTIONS)
        )
    return {
        **host,
        "NetworkMode": _check_network(host.get("NetworkMode")),
        "RestartPolicy": restart,
        "CorralHealthOnFailure": on_failure,
        "CorralOomKillGroup": oom_group,
        "CorralPressureThresholds": pressure_config.thresholds,
        "CorralPressureActions": [a.to_host_config() for a in pressure_config.actions],
        "AutoRemove": bool(host.get("AutoRemove")),
        "Init": bool(host.get("Init")),
        "Memory": memory,
        "MemorySwap": swap,
        "NanoCpus": nano_cpus,
        "CpuQuota": quota,
        "CpuPeriod": period,
        "PidsLimit": pids,
        "LogConfig": _check_log_config(host.get("LogConfig")),
    }


def _check_memory(host: dict) -> int:
    memory = _int_field(host, "Memory")
    if memory < 0:
        raise BadParameter(f"invalid memory limit {memory}: it cannot be negative")
    if 0 < memory < MIN_MEMORY_BYTES:
        raise BadParameter(
            f"memory limit {memory} bytes is too small: the minimum is 6 MiB (6m)"
        )
    return memory


def _check_swap(host: dict, memory: int) -> int:
    swap = _int_field(host, "MemorySwap")
    if swap in (0, -1):
        return swap
    if swap < -1:
        raise BadParameter(
            f"invalid memory+swap limit {swap}: use -1 for unlimited swap or a size"
        )
    if not memory:
        raise BadParameter(
            "a memory+swap limit (--memory-swap) needs a memory limit (--memory) too"
        )
    if swap < memory:
        raise BadParameter(
            f"memory+swap limit {swap} is below the memory limit {memory}: "
            "--memory-swap counts memory plus swap, so it must be at least --memory"
        )
    return swap


def _check_cpu(host: dict, host_cpus: int) -> tuple[int, int, int]:
    nano = _int_field(host, "NanoCpus")
    quota = _int_field(host, "CpuQuota")
    period = _int_field(host, "CpuPeriod")
    if nano < 0:
        raise BadParameter(f"invalid CPU count {nano / 1e9:g}: it cannot be negative")
    if nano and (quota or period):
        raise BadParameter(
            "conflicting options: --cpus (NanoCpus) and CPU quota/period cannot "
            "both be set; use one of them"
        )
    if nano > host_cpus * 1_000_000_000:
        raise BadParameter(
            f"range of CPUs is from 0.01 to {host_cpus}.00, as there are only "
            f"{host_cpus} CPUs available; lower --cpus"
        )
    if nano and nano < 10_000_000:
        raise BadParameter("--cpus must be at least 0.01")
    if period and not 1000 <= period <= 1_000_000:
        raise BadParameter("CPU period must be between 1000 and 1000000 microseconds")
    if quota and quota != -1 and quota < 1000:
        raise BadParameter("CPU quota must be at least 1000 microseconds")
    return nano, quota, period


def _check_pids(host: dict) -> int | None:
    value = host.get("PidsLimit")
    if value is None:
        return None
    if not isinstance(value, int) or value < -1:
        raise BadParameter(
            f"invalid pids limit {value!r}: use a positive number, or 0 or -1 for "
            "no limit"
        )
    return value


def check_restart_policy(policy, auto_remove: bool) -> dict:
    policy = policy or {}
    if not isinstance(policy, dict):
        raise BadParameter("RestartPolicy must be an object with Name and MaximumRetryCount")
    name = policy.get("Name") or "no"
    count = policy.get("MaximumRetryCount") or 0
    if name not in RESTART_POLICIES:
        raise BadParameter(
            f"invalid restart policy {name!r}: use one of "
            + ", ".join(RESTART_POLICIES)
        )
    if not isinstance(count, int) or count < 0:
        raise BadParameter(
            f"invalid restart policy: maximum retry count {count!r} cannot be negative"
        )
    if count and name != "on-failure":
        raise BadParameter(
            "invalid restart policy: maximum retry count can only be used with "
            f"'on-failure', not with {name!r}"
        )
    if auto_remove and name != "no":
        raise BadParameter(
            f"can't create 'AutoRemove' container with restart policy {name!r}: "
            "--rm removes the container when it exits, so it cannot be restarted; "
            "drop one of them"
        )
    return {"Name": name if policy.get("Name") else "no", "MaximumRetryCount": count}


def _check_network(mode) -> str:
    mode = mode or ""
    if mode not in NETWORK_MODES:
        raise BadParameter(
            f"network mode {mode!r} is not supported by this version of corral; "
            "use --network none (own network namespace, loopback only) or host"
        )
    return NETWORK_MODES[mode]


def _check_log_config(log_config) -> dict:
    log_config = log_config or {}
    kind = log_config.get("Type") or "json-file"
    if kind != "json-file":
        raise BadParameter(
            f"log driver {kind!r} is not supported; corral writes json-file logs"
        )
    options = dict(log_config.get("Config") or {})
    unknown = sorted(set(options) - {"max-size", "max-file"})
    if unknown:
        raise BadParameter(
            f"unknown log option(s) {', '.join(unknown)}; corral knows max-size and "
            "max-file"
        )
    options.setdefault("max-size", DEFAULT_LOG_MAX_SIZE)
    options.setdefault("max-file", DEFAULT_LOG_MAX_FILE)
    log_limits(options)
    return {"Type": "json-file", "Config": options}


def log_limits(options: dict) -> tuple[int, int]:
    """(max_size_bytes, max_files) from validated log options."""
    try:
        max_size = parse_size(options["max-size"])
    except ValueError as err:
        raise BadParameter(f"log option max-size: {err}") from None
    try:
        max_file = int(options["max-file"])
    except ValueError:
        max_file = 0
    if max_size < 1024:
        raise BadParameter("log option max-size must be at least 1k")
    if max_file < 1:
        raise BadParameter(
            f"log option max-file {options['max-file']!r} must be a whole number >= 1"
        )
    return max_size, max_file
