"""Restart policy, backoff and start limit of one container, as pure state.

No trio, no I/O, no clock of its own: every function that needs the time
takes ``now_s``, seconds on the caller's clock, and the jitter takes a
random number in [0, 1) from the caller. Functions never mutate: they take a
frozen ``RestartState`` and return a new one, which the caller persists.

Rules (Docker's restartmanager is the reference; jitter and the start limit
are corral's additions):

- When a run ends, ``decide`` answers whether to restart and after what
  delay. The policy table ``_RULES`` below says which exits each policy
  restarts; a requested stop or kill never restarts, whatever the policy.
- ``on-failure:N`` allows N automatic restarts (N = 0: no limit), so with
  N = 3 a container that always fails runs 4 times.
- The nominal delay is ``initial_delay_s`` before the first restart and is
  multiplied by ``factor`` before each later one, capped at ``max_delay_s``.
  A run that lasted at least ``reset_after_s`` resets it to the initial
  delay. Defaults give 0.1, 0.2, 0.4, ... 51.2, 60, 60 s.
- Jitter f spreads the delay actually used around the nominal one:
  ``delay = nominal * (1 - f + 2 * f * r)`` for the caller's r in [0, 1),
  so it lies in [nominal * (1 - f), nominal * (1 + f)). Only the nominal
  delay doubles, and only the nominal delay is capped: with jitter a delay
  may exceed ``max_delay_s`` by up to the fraction f.
- The delay is computed when the run ends, not when the restart happens,
  so while a restart is pending the state shows its delay and due time.
- Start limit (systemd's StartLimitBurst/StartLimitIntervalSec): at most
  ``burst`` automatic restarts within any ``interval_s``, counted at the
  time the next restart would happen. A restart beyond that is refused and
  the policy gives up; an exhausted ``on-failure`` gives up too. A policy
  that gave up never revives by itself, not even on daemon start.
- ``restart_count`` counts automatic restarts only. A manual start or
  restart resets the count, the delay, the start-limit window and any
  give-up.
- A manual stop or kill (the exit is flagged ``stop_requested``, or
  ``manual_stop`` is called while a restart is pending) cancels the pending
  restart and marks the container manually stopped. Only stops the user
  asked for count: a signal the application handles is not a stop.
- On daemon start (``should_start_on_daemon_start``): ``always`` starts
  even after a manual stop (Docker's documented rule); ``unless-stopped``
  starts unless manually stopped; ``on-failure`` starts only after a failed
  exit, when not manually stopped and retries remain; ``no`` never starts.
  corrald keeps the restart count intact across that start (Docker's
  daemon resets it); ``manual_start`` is for starts the user asks for.

Times in the state (``restarts_at_s``, ``next_restart_at_s``,
``gave_up_at_s``) are on the caller's clock. A caller that persists the state
across a daemon restart must use a clock that survives one for them to stay
meaningful there.

corral's extension fields in HostConfig, next to Docker's RestartPolicy
(durations in nanoseconds like Docker's other duration fields; a field that
is absent or null takes its default; so does 0, since Go clients send zero
values for fields they do not set, except in InitialDelay, where 0 asks for
restarts without delay):

    "CorralRestartBackoff": {"InitialDelay": ns (0.1 s), "Factor": 2.0,
                             "MaxDelay": ns (60 s), "ResetAfter": ns (10 s),
                             "Jitter": 0.0}
    "CorralStartLimit": {"Burst": int, "Interval": ns}   (no limit)

Burst and Interval are set together or not at all (0 or null for both: no
limit).
"""

import math
from dataclasses import asdict, dataclass, replace

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class _Rule:
    after_success: bool  # restart after exit code 0
    after_failure: bool  # restart after a non-zero exit code
    counts_retries: bool  # MaximumRetryCount limits the restarts
    revives_manual_stop: bool  # starts on daemon start after a manual stop


# The one table of what each policy does; decide and
# should_start_on_daemon_start only read it.
# fmt: off
_RULES = {
    #                       restarts   restarts   retries   daemon start
    #                       after      after a    limited   revives a
    #                       exit 0     failure              manual stop
    "no":             _Rule(False,     False,     False,    False),
    "on-failure":     _Rule(False,     True,      True,     False),
    "always":         _Rule(True,      True,      False,    True),
    "unless-stopped": _Rule(True,      True,      False,    False),
}
# fmt: on

POLICY_NAMES = tuple(_RULES)


@dataclass(frozen=True)
class Backoff:
    initial_delay_s: float = 0.1
    factor: float = 2.0
    max_delay_s: float = 60.0
    reset_after_s: float = 10.0
    jitter: float = 0.0


@dataclass(frozen=True)
class StartLimit:
    """At most ``burst`` automatic restarts within ``interval_s``."""

    burst: int | None = None
    interval_s: float | None = None

    @property
    def enabled(self) -> bool:
        return self.burst is not None and self.interval_s is not None


@dataclass(frozen=True)
class RestartPolicy:
    name: str = "no"
    max_retries: int = 0
    backoff: Backoff = Backoff()
    start_limit: StartLimit = StartLimit()

    @classmethod
    def from_host_config(cls, host_config: dict) -> "RestartPolicy":
        """Read Docker's RestartPolicy and corral's extension fields.

        Raises ValueError, with a message meant for the user, when a value
        is invalid (see ``validate_extensions``).
        """
        policy = host_config.get("RestartPolicy") or {}
        name = policy.get("Name") or "no"
        if name not in _RULES:
            raise ValueError(
                f"invalid restart policy {name!r}: use one of "
                + ", ".join(POLICY_NAMES)
            )
        max_retries = policy.get("MaximumRetryCount") or 0
        if not _is_int(max_retries) or max_retries < 0:
            raise ValueError(
                f"invalid restart policy: maximum retry count {max_retries!r} "
                "must be a whole number, 0 or more (0: no limit)"
            )
        return cls(
            name=name,
            max_retries=max_retries,
            backoff=_read_backoff(host_config),
            start_limit=_read_start_limit(host_config),
        )


def validate_extensions(host_config: dict) -> None:
    """Check CorralRestartBackoff and CorralStartLimit in a HostConfig.

    Raises ValueError whose message names the field, the bad value and what
    to give instead.
    """
    _read_backoff(host_config)
    _read_start_limit(host_config)


@dataclass(frozen=True)
class RestartState:
    """What the policy remembers about one container between runs."""

    restart_count: int = 0
    nominal_delay_s: float = 0.0  # 0: no restart since the last reset
    manually_stopped: bool = False
    restarts_at_s: tuple[float, ...] = ()
    gave_up_reason: str | None = None
    gave_up_at_s: float | None = None
    next_restart_at_s: float | None = None  # set while a restart is pending
    current_delay_s: float = 0.0  # delay of the pending or last restart

    @property
    def restart_pending(self) -> bool:
        return self.next_restart_at_s is not None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["restarts_at_s"] = list(self.restarts_at_s)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RestartState":
        """Rebuild a state saved by ``to_dict``; missing keys take defaults
        and unknown ones are ignored, so older and newer records load."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        if "restarts_at_s" in known:
            known["restarts_at_s"] = tuple(float(t) for t in known["restarts_at_s"])
        return cls(**known)


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay_s: float
    reason: str  # why there is no restart; "" when restarting


def decide(
    policy: RestartPolicy,
    state: RestartState,
    *,
    exit_code: int,
    run_duration_s: float,
    stop_requested: bool,
    now_s: float,
    rand: float = 0.5,
) -> tuple[Decision, RestartState]:
    """Decide what follows a run that just ended at ``now_s``.

    ``stop_requested`` is true only when the user stopped or killed the
    container. When the decision is to restart, the new state holds the
    pending restart's delay and due time; the caller waits ``delay_s`` and
    then restarts only if the state it holds then still has a restart
    pending (a manual stop in between cancels it).
    """
    if not 0 <= rand < 1:
        raise ValueError(f"rand must be in [0, 1), got {rand!r}")
    if stop_requested or state.manually_stopped:
        return _no_restart("manually stopped"), manual_stop(state)
    if state.gave_up_reason is not None:
        return _no_restart(state.gave_up_reason), state

    rule = _RULES[policy.name]
    if not (rule.after_failure if exit_code else rule.after_success):
        return _no_restart(_declined(policy.name, exit_code)), _idle(state)
    if rule.counts_retries and _retries_exhausted(policy, state):
        reason = f"maximum retry count {policy.max_retries} reached"
        return _give_up(state, reason, now_s)

    nominal_s = _next_nominal_delay_s(
        policy.backoff, state.nominal_delay_s, run_duration_s
    )
    delay_s = nominal_s * (1 - policy.backoff.jitter + 2 * policy.backoff.jitter * rand)
    due_s = now_s + delay_s
    recent = _recent_restarts(policy.start_limit, state.restarts_at_s, due_s)
    if policy.start_limit.enabled and len(recent) >= policy.start_limit.burst:
        return _give_up(state, _start_limit_reason(policy.start_limit), now_s)

    pending = replace(
        state,
        nominal_delay_s=nominal_s,
        current_delay_s=delay_s,
        next_restart_at_s=due_s,
        restarts_at_s=recent,
    )
    return Decision(restart=True, delay_s=delay_s, reason=""), pending


def restarted(state: RestartState, now_s: float) -> RestartState:
    """Record that the pending restart happened at ``now_s``.

    Raises ValueError when no restart is pending: a restart nobody scheduled
    (or one cancelled by a manual stop) must not count.
    """
    if not state.restart_pending:
        raise ValueError("no automatic restart is pending, so none can be recorded")
    return replace(
        state,
        restart_count=state.restart_count + 1,
        restarts_at_s=(*state.restarts_at_s, now_s),
        next_restart_at_s=None,
    )


def manual_start(state: RestartState) -> RestartState:
    """A manual start or restart: count, delay, window and give-up reset."""
    return RestartState()


def manual_stop(state: RestartState) -> RestartState:
    """A manual stop or kill: cancel any pending restart and remember it."""
    return replace(state, manually_stopped=True, next_restart_at_s=None)


def started_on_daemon_start(state: RestartState) -> RestartState:
    """The daemon started the container at its own start (see
    ``should_start_on_daemon_start``): an ``always`` container revived after
    a manual stop restarts by policy again; its count stays."""
    return replace(state, manually_stopped=False, next_restart_at_s=None)


def should_start_on_daemon_start(
    policy: RestartPolicy, state: RestartState, last_exit_code: int | None
) -> bool:
    """Whether the daemon starts this stopped container when it starts.

    ``last_exit_code`` is None for a container that never ran; such a
    container is never started here.
    """
    rule = _RULES[policy.name]
    if last_exit_code is None or state.gave_up_reason is not None:
        return False
    if state.manually_stopped and not rule.revives_manual_stop:
        return False
    if not (rule.after_failure if last_exit_code else rule.after_success):
        return False
    return not (rule.counts_retries and _retries_exhausted(policy, state))


def _no_restart(reason: str) -> Decision:
    return Decision(restart=False, delay_s=0.0, reason=reason)


def _idle(state: RestartState) -> RestartState:
    return replace(state, next_restart_at_s=None)


def _give_up(
    state: RestartState, reason: str, now_s: float
) -> tuple[Decision, RestartState]:
    given_up = replace(
        state, gave_up_reason=reason, gave_up_at_s=now_s, next_restart_at_s=None
    )
    return _no_restart(reason), given_up


def _declined(name: str, exit_code: int) -> str:
    if name == "on-failure":
        return f"exit code {exit_code} is not a failure, and the policy is on-failure"
    return f"policy is {name}"


def _retries_exhausted(policy: RestartPolicy, state: RestartState) -> bool:
    return policy.max_retries > 0 and state.restart_count >= policy.max_retries


def _next_nominal_delay_s(
    backoff: Backoff, previous_s: float, run_duration_s: float
) -> float:
    if previous_s == 0 or run_duration_s >= backoff.reset_after_s:
        return min(backoff.initial_delay_s, backoff.max_delay_s)
    return min(previous_s * backoff.factor, backoff.max_delay_s)


def _recent_restarts(
    limit: StartLimit, restarts_at_s: tuple[float, ...], at_s: float
) -> tuple[float, ...]:
    """The restarts inside the window that ends at ``at_s``; older ones can
    never count again, so dropping them keeps the state small."""
    if not limit.enabled:
        return ()
    return tuple(t for t in restarts_at_s if at_s - t < limit.interval_s)


def _start_limit_reason(limit: StartLimit) -> str:
    noun = "restart" if limit.burst == 1 else "restarts"
    return f"start limit hit: {limit.burst} {noun} within {limit.interval_s:g} s"


# ---- HostConfig extension fields ---------------------------------------------

_BACKOFF = "CorralRestartBackoff"
_START_LIMIT = "CorralStartLimit"
_BACKOFF_FIELDS = ("InitialDelay", "Factor", "MaxDelay", "ResetAfter", "Jitter")
_START_LIMIT_FIELDS = ("Burst", "Interval")


def _read_backoff(host_config: dict) -> Backoff:
    fields = _extension(host_config, _BACKOFF, _BACKOFF_FIELDS)
    default = Backoff()
    initial_s = _duration_s(
        fields, _BACKOFF, "InitialDelay", default.initial_delay_s, zero_is_default=False
    )
    max_s = _duration_s(fields, _BACKOFF, "MaxDelay", default.max_delay_s)
    reset_s = _duration_s(fields, _BACKOFF, "ResetAfter", default.reset_after_s)
    factor = _number(fields, _BACKOFF, "Factor", default.factor)
    jitter = _number(fields, _BACKOFF, "Jitter", default.jitter)
    if factor < 1:
        raise ValueError(
            f"invalid {_BACKOFF}.Factor {factor:g}: it must be at least 1, or "
            "the delay would shrink after each failure; use 1 for a constant delay"
        )
    if not 0 <= jitter < 1:
        raise ValueError(
            f"invalid {_BACKOFF}.Jitter {jitter:g}: it is a fraction of the "
            "delay and must be at least 0 and below 1, e.g. 0.1 for +/-10 %"
        )
    if max_s < initial_s:
        raise ValueError(
            f"invalid {_BACKOFF}: MaxDelay {max_s:g} s is below InitialDelay "
            f"{initial_s:g} s; raise MaxDelay or lower InitialDelay"
        )
    return Backoff(initial_s, factor, max_s, reset_s, jitter)


def _read_start_limit(host_config: dict) -> StartLimit:
    fields = _extension(host_config, _START_LIMIT, _START_LIMIT_FIELDS)
    burst = fields.get("Burst") or 0
    interval_ns = fields.get("Interval") or 0
    if not _is_int(burst) or burst < 0:
        raise ValueError(
            f"invalid {_START_LIMIT}.Burst {burst!r}: it is the number of "
            "restarts allowed per Interval and must be a whole number, 1 or more"
        )
    if not _is_int(interval_ns) or interval_ns < 0:
        raise ValueError(
            f"invalid {_START_LIMIT}.Interval {interval_ns!r}: it must be a "
            "positive whole number of nanoseconds, e.g. 10000000000 for 10 s"
        )
    if not burst and not interval_ns:
        return StartLimit()
    if not burst or not interval_ns:
        missing, given = ("Burst", "Interval") if not burst else ("Interval", "Burst")
        raise ValueError(
            f"invalid {_START_LIMIT}: {given} is set but {missing} is 0 or missing; "
            f"give both (e.g. Burst 5, Interval 10000000000 for 5 restarts in "
            f"10 s), or neither for no limit"
        )
    return StartLimit(burst=burst, interval_s=interval_ns / NS_PER_S)


def _extension(host_config: dict, name: str, allowed: tuple[str, ...]) -> dict:
    fields = host_config.get(name) or {}
    if not isinstance(fields, dict):
        # ValueError like every other bad value: callers answer all with a 400.
        raise ValueError(  # noqa: TRY004
            f"invalid {name}: it must be an object with the fields "
            + ", ".join(allowed)
        )
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown field {name}.{unknown[0]}: the known fields are "
            + ", ".join(allowed)
        )
    return fields


def _duration_s(
    fields: dict, name: str, key: str, default_s: float, zero_is_default=True
) -> float:
    value = fields.get(key)
    if value is None or (value == 0 and zero_is_default):
        return default_s
    if not _is_int(value):
        raise ValueError(
            f"invalid {name}.{key} {value!r}: durations are whole numbers of "
            "nanoseconds, e.g. 100000000 for 0.1 s"
        )
    if value < 0:
        raise ValueError(
            f"invalid {name}.{key} {value}: a delay cannot be negative; give "
            f"nanoseconds, or leave it out for the default {default_s:g} s"
        )
    return value / NS_PER_S


def _number(fields: dict, name: str, key: str, default: float) -> float:
    value = fields.get(key) or None
    if value is None:
        return default
    if _is_int(value) or (isinstance(value, float) and math.isfinite(value)):
        return float(value)
    raise ValueError(f"invalid {name}.{key} {value!r}: it must be a finite number")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
