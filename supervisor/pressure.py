"""Pressure thresholds and actions of one container, as pure state.

No trio, no I/O: the watcher (supervisor/watchers.py) feeds each resource's
tracker what it learnt and when, and carries out what the tracker answers.

Rules:

- The share of a resource is the fraction of wall time, in percent, during
  which some task of the container stalled on it ("some" in the pressure
  file), over the last window.
- A resource turns high when its share reaches its threshold, and clears when
  a later window's share falls below three quarters of the threshold
  (hysteresis, so a share that hovers at the threshold does not flap). Each
  turn is one event: ``high`` or ``cleared``.
- A kernel trigger set at a level fires when a window's stall reached that
  level; ``on_trigger`` takes that as a share of at least the level, which
  can turn a resource high or start an action's count, never end either.
- An action (restart, stop or kill) is due once the share has stayed at or
  above its limit for its whole duration, measured from the first window at
  or above the limit; a window below the limit starts the count again. It is
  due once per such stretch.
- A tracker needs samples while it is high or counting towards an action;
  otherwise the kernel trigger (or, without triggers, a sample each window)
  tells it when to look again.
- ``peak`` is the highest share seen during the run.

HostConfig fields (corral's extensions):

    "CorralPressureThresholds": {"cpu": 80, "memory": 20, "io": 40}  (percent)
    "CorralPressureActions": [{"Resource": "memory", "Limit": 60,
                               "Duration": ns, "Action": "restart"}]

A resource left out of CorralPressureThresholds takes its default below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

RESOURCES = ("cpu", "memory", "io")
ACTIONS = ("restart", "stop", "kill")
DEFAULT_THRESHOLDS = {"cpu": 80.0, "memory": 20.0, "io": 40.0}
CLEAR_FRACTION = 0.75
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class PressureAction:
    resource: str
    limit: float  # percent
    duration_s: float
    action: str

    def to_host_config(self) -> dict:
        return {"Resource": self.resource, "Limit": self.limit,
                "Duration": round(self.duration_s * NS_PER_S), "Action": self.action}


@dataclass
class ResourceTracker:
    threshold: float
    action: PressureAction | None = None
    high: bool = False
    above_limit_since_s: float | None = None
    acted: bool = False  # the action was due in this stretch above the limit
    peak: float = 0.0

    @property
    def clear_below(self) -> float:
        return self.threshold * CLEAR_FRACTION

    @property
    def trigger_level(self) -> float:
        """The share at which the kernel should wake the watcher."""
        if self.action is None:
            return self.threshold
        return min(self.threshold, self.action.limit)

    @property
    def needs_samples(self) -> bool:
        return self.high or self.above_limit_since_s is not None

    def on_trigger(self, now_s: float) -> list[str]:
        """The kernel saw a window whose share reached ``trigger_level``: a
        lower bound, so it may turn the resource high or start counting
        towards the action, but never clears or resets anything."""
        level = self.trigger_level
        self.peak = max(self.peak, level)
        counting = self.above_limit_since_s is not None
        if self.action is not None and level >= self.action.limit and not counting:
            self.above_limit_since_s = now_s
        if not self.high and level >= self.threshold:
            self.high = True
            return ["high"]
        return []

    def on_sample(self, now_s: float, share: float) -> list[str]:
        """One window's share; returns "high", "cleared" and "act" as due."""
        self.peak = max(self.peak, share)
        turned = []
        if not self.high and share >= self.threshold:
            self.high = True
            turned.append("high")
        elif self.high and share < self.clear_below:
            self.high = False
            turned.append("cleared")
        if self.action is not None and self._action_due(now_s, share):
            turned.append("act")
        return turned

    def _action_due(self, now_s: float, share: float) -> bool:
        if share < self.action.limit:
            self.above_limit_since_s = None
            self.acted = False
            return False
        if self.above_limit_since_s is None:
            self.above_limit_since_s = now_s
        if self.acted or now_s - self.above_limit_since_s < self.action.duration_s:
            return False
        self.acted = True
        return True


@dataclass
class PressureConfig:
    thresholds: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    actions: list[PressureAction] = field(default_factory=list)

    @classmethod
    def from_host_config(cls, host: dict) -> PressureConfig:
        """Read and check the extension fields; ValueError names what is wrong."""
        return cls(
            thresholds=_thresholds(host.get("CorralPressureThresholds")),
            actions=_actions(host.get("CorralPressureActions")),
        )

    def trackers(self) -> dict[str, ResourceTracker]:
        by_resource = {a.resource: a for a in self.actions}
        return {r: ResourceTracker(self.thresholds[r], by_resource.get(r))
                for r in RESOURCES}


def share_percent(total_before_us: int, total_after_us: int, elapsed_s: float) -> float:
    """Stall share over an interval from two readings of a pressure total."""
    if elapsed_s <= 0:
        return 0.0
    stalled_s = max(0, total_after_us - total_before_us) / 1e6
    return min(100.0, 100.0 * stalled_s / elapsed_s)


def parse_thresholds(spec: str) -> dict[str, float]:
    """--pressure-threshold memory=20%,cpu=80% as a dict of percents."""
    thresholds = {}
    for item in spec.split(","):
        resource, sep, value = item.strip().partition("=")
        if not sep:
            raise ValueError(
                f"invalid pressure threshold {item!r}: use RESOURCE=PERCENT, "
                "e.g. memory=20%"
            )
        thresholds[resource] = parse_percent(value, f"pressure threshold of {resource}")
    return _thresholds(thresholds)


def parse_action(spec: str, parse_duration_s) -> PressureAction:
    """--pressure-action memory:60%:30s:restart."""
    parts = spec.split(":")
    if len(parts) != 4:
        raise ValueError(
            f"invalid pressure action {spec!r}: use RESOURCE:LIMIT:DURATION:ACTION, "
            "e.g. memory:60%:30s:restart"
        )
    resource, limit, duration, action = parts
    return _action(resource, parse_percent(limit, "pressure action limit"),
                   parse_duration_s(duration), action)


def parse_percent(text: str, what: str) -> float:
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise ValueError(f"invalid {what} {text!r}: give a percentage such as 20%") from None
    return value


def _thresholds(value) -> dict[str, float]:
    thresholds = dict(DEFAULT_THRESHOLDS)
    if value is None:
        return thresholds
    if not isinstance(value, dict):
        # ValueError like every other bad value: callers answer all with a 400.
        raise ValueError(  # noqa: TRY004
            "invalid CorralPressureThresholds: it must be an object such as "
            '{"memory": 20, "cpu": 80} (percent)'
        )
    for resource, percent in value.items():
        _check_resource(resource)
        thresholds[resource] = _check_percent(percent, f"pressure threshold of {resource}")
    return thresholds


def _actions(value) -> list[PressureAction]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(  # noqa: TRY004
            "invalid CorralPressureActions: it must be a list of objects")
    actions = []
    for item in value:
        if not isinstance(item, dict) or set(item) - {"Resource", "Limit", "Duration",
                                                      "Action"}:
            raise ValueError(
                f"invalid pressure action {item!r}: give an object with Resource, "
                "Limit (percent), Duration (nanoseconds) and Action"
            )
        duration = item.get("Duration")
        if not isinstance(duration, int) or isinstance(duration, bool) or duration < 0:
            raise ValueError(
                f"invalid pressure action duration {duration!r}: give whole "
                "nanoseconds, 0 or more"
            )
        actions.append(_action(item.get("Resource"), item.get("Limit"),
                               duration / NS_PER_S, item.get("Action")))
    resources = [a.resource for a in actions]
    if len(set(resources)) != len(resources):
        raise ValueError(
            "invalid pressure actions: give at most one action per resource"
        )
    return actions


def _action(resource, limit, duration_s: float, action) -> PressureAction:
    _check_resource(resource)
    limit = _check_percent(limit, "pressure action limit")
    if action not in ACTIONS:
        raise ValueError(
            f"invalid pressure action {action!r}: use one of " + ", ".join(ACTIONS)
        )
    if duration_s < 0:
        raise ValueError(f"invalid pressure action duration {duration_s:g} s: "
                         "it cannot be negative")
    return PressureAction(resource, limit, duration_s, action)


def _check_resource(resource) -> None:
    if resource not in RESOURCES:
        raise ValueError(
            f"invalid pressure resource {resource!r}: use one of " + ", ".join(RESOURCES)
        )


def _check_percent(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and 0 < value <= 100
    ):
        raise ValueError(
            f"invalid {what} {value!r}: give a percentage above 0 and at most 100"
        )
    return float(value)
