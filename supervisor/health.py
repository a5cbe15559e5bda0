"""Health checks: Docker's HEALTHCHECK rules as a small state machine.

Rules (Docker's are the reference):
- A container with a health check starts "starting". Each probe runs the
  test command inside the container; exit 0 is a pass, anything else (a
  timeout included) a failure.
- A pass makes the container "healthy" and clears the failing streak.
- A failure adds to the streak; `retries` failures in a row make it
  "unhealthy". During the start period failures do not count, and probes
  come every start_interval instead of every interval, until the first pass.
- The last MAX_LOG results are kept, each with its output capped at
  MAX_OUTPUT_BYTES.
Pure logic: the daemon runs the probes and feeds the results in.
"""

import collections
from dataclasses import dataclass, field

MAX_LOG = 5
MAX_OUTPUT_BYTES = 4096
ACTIONS = ("none", "restart", "stop", "kill")
_NS = 1_000_000_000


@dataclass(frozen=True)
class HealthConfig:
    test: list[str]
    interval_s: float = 30.0
    timeout_s: float = 30.0
    retries: int = 3
    start_period_s: float = 0.0
    start_interval_s: float = 5.0

    @classmethod
    def from_config(cls, doc: dict | None) -> "HealthConfig | None":
        """The check of a container's Config.Healthcheck; None when it has none."""
        if not doc or not doc.get("Test") or doc["Test"][0] == "NONE":
            return None

        def seconds(key: str, default_s: float) -> float:
            return (doc.get(key) or 0) / _NS or default_s

        return cls(
            test=list(doc["Test"]),
            interval_s=seconds("Interval", 30.0),
            timeout_s=seconds("Timeout", 30.0),
            retries=doc.get("Retries") or 3,
            start_period_s=seconds("StartPeriod", 0.0),
            start_interval_s=seconds("StartInterval", 5.0),
        )

    def command(self) -> list[str]:
        kind, *rest = self.test
        if kind == "CMD-SHELL":
            return ["/bin/sh", "-c", " ".join(rest)]
        return rest


def check_healthcheck(doc) -> None:
    """Raise ValueError with a user message if Config.Healthcheck is malformed."""
    if doc is None:
        return
    if not isinstance(doc, dict):
        raise ValueError("Healthcheck must be an object")
    test = doc.get("Test") or []
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        raise ValueError("Healthcheck.Test must be a list of strings")
    if test and test[0] not in ("NONE", "CMD", "CMD-SHELL"):
        raise ValueError(
            f"Healthcheck.Test must start with NONE, CMD or CMD-SHELL, not {test[0]!r}"
        )
    if test and test[0] in ("CMD", "CMD-SHELL") and len(test) < 2:
        raise ValueError(f"Healthcheck.Test {test[0]} needs a command after it")
    for key in ("Interval", "Timeout", "StartPeriod", "StartInterval"):
        value = doc.get(key) or 0
        if not isinstance(value, int) or (value and value < 1_000_000):
            raise ValueError(
                f"Healthcheck.{key} must be 0 (the default) or at least 1 ms, "
                "in nanoseconds"
            )
    retries = doc.get("Retries") or 0
    if not isinstance(retries, int) or retries < 0:
        raise ValueError("Healthcheck.Retries must be a whole number >= 0")


def merge_healthcheck(requested, from_image):
    """Config.Healthcheck of a new container, as Docker merges it: the
    request's fields override the image's HEALTHCHECK one by one, and fields
    it leaves empty or 0 keep the image's; Test ["NONE"] disables both."""
    if not requested:
        return from_image or None
    merged = dict(from_image or {})
    merged.update({key: value for key, value in requested.items() if value})
    return merged if merged.get("Test") else None


@dataclass
class ProbeResult:
    start: str
    end: str
    exit_code: int
    output: str


@dataclass
class HealthState:
    retries: int
    status: str = "starting"
    failing_streak: int = 0
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_LOG))

    def record(self, result: ProbeResult, in_start_period: bool) -> str | None:
        """Take one probe result; returns the new status when it changed."""
        self.log.append(result)
        before = self.status
        if result.exit_code == 0:
            self.failing_streak = 0
            self.status = "healthy"
        elif not (in_start_period and self.status == "starting"):
            self.failing_streak += 1
            if self.failing_streak >= self.retries:
                self.status = "unhealthy"
        return self.status if self.status != before else None

    def view(self) -> dict:
        """State.Health as Docker's inspect shows it."""
        return {
            "Status": self.status,
            "FailingStreak": self.failing_streak,
            "Log": [
                {"Start": r.start, "End": r.end, "ExitCode": r.exit_code,
                 "Output": r.output}
                for r in self.log
            ],
        }
