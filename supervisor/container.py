"""One container as the daemon holds it: its Docker-shaped record plus the
live handles of its current run."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .logs import LogWriter

ZERO_TIME = "0001-01-01T00:00:00Z"


def now_rfc3339() -> str:
    from .logs import format_time_ns

    return format_time_ns(time.time_ns())


@dataclass
class Run:
    """Handles of one run of the container's PID 1."""

    pid: int
    pidfd: int
    cgroup: object
    stdout_fd: int
    stderr_fd: int
    started_at_s: float
    exited: trio.Event = field(default_factory=trio.Event)
    # Set a moment after exited, once the run's cgroup is removed, or
    # emptied for the next run to reuse (see Engine._restart_after).
    released: trio.Event = field(default_factory=trio.Event)
    # memory.events' oom_kill count when the run started: a cgroup reused
    # from an earlier run has counted that run's kills.
    oom_kills_before: int = 0
    # Set by stop, rm and a SIGKILL through the API: the exit was asked for,
    # so the restart policy treats it as a manual stop.
    stop_requested: bool = False
    # The last signal sent through the kill API; dying of it is a manual stop.
    killed_with: int | None = None
    # "restart" or "kill" when a failed health check ended the run.
    unhealthy_action: str | None = None
    # "restart" or "kill" when a pressure action ended the run.
    pressure_action: str | None = None
    # The cgroup watchers of this run (supervisor.watchers.RunWatch).
    watch: object | None = None
    # Whether the kernel log named PID 1 as an OOM victim of this run.
    pid1_oom_killed: bool = False
    # Resources whose pressure is high right now.
    pressure_high: set = field(default_factory=set)


@dataclass
class Container:
    record: dict
    directory: Path
    log: LogWriter
    run: Run | None = None
    removing: bool = False
    removed: trio.Event = field(default_factory=trio.Event)
    # Set whenever a run ends; replaced when the next run starts.
    exited: trio.Event = field(default_factory=trio.Event)
    lock: trio.Lock = field(default_factory=trio.Lock)
    # The backoff delay before an automatic restart; cancelled by stop,
    # start, restart and rm.
    pending_restart: trio.CancelScope | None = None
    # Set once the last run's cgroup is removed or emptied: the next run
    # makes its cgroup, under the same name, or reuses it, only then.
    cgroup_released: trio.Event | None = None
    # The run whose cgroup an automatic restart will reuse, from the
    # restart decision until the next launch takes it.
    kept_run: Run | None = None

    @property
    def id(self) -> str:
        return self.record["Id"]

    @property
    def name(self) -> str:
        return self.record["Name"].lstrip("/")

    @property
    def state(self) -> dict:
        return self.record["State"]

    @property
    def running(self) -> bool:
        return self.state["Running"]

    def attributes(self, **extra) -> dict:
        attrs = {
            "name": self.name,
            "image": self.record["Config"]["Image"],
            **(self.record["Config"].get("Labels") or {}),
        }
        attrs.update({k: str(v) for k, v in extra.items()})
        return attrs


def new_state() -> dict:
    return {
        "Status": "created",
        "Running": False,
        "Paused": False,
        "Restarting": False,
        "OOMKilled": False,
        "Dead": False,
        "Pid": 0,
        "ExitCode": 0,
        "Error": "",
        "StartedAt": ZERO_TIME,
        "FinishedAt": ZERO_TIME,
        "CorralOomKillCount": 0,
        "CorralTerminations": [],
    }
