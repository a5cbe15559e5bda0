"""The restart policy as a specification: pure decisions, and crash loops
played on trio's MockClock so backoff is checked in virtual seconds."""

import json
from dataclasses import dataclass, field

import pytest
import trio

from supervisor.policy import (
    Backoff,
    Decision,
    RestartPolicy,
    RestartState,
    StartLimit,
    decide,
    manual_start,
    manual_stop,
    restarted,
    should_start_on_daemon_start,
    validate_extensions,
)

NO = RestartPolicy("no")
ALWAYS = RestartPolicy("always")
UNLESS_STOPPED = RestartPolicy("unless-stopped")
ON_FAILURE = RestartPolicy("on-failure")
ON_FAILURE_3 = RestartPolicy("on-failure", max_retries=3)


def exited(policy, state, *, code=1, run_s=0.0, stop=False, now_s=0.0, rand=0.5):
    return decide(
        policy,
        state,
        exit_code=code,
        run_duration_s=run_s,
        stop_requested=stop,
        now_s=now_s,
        rand=rand,
    )


@dataclass
class FakeContainer:
    """A container whose runs take virtual time; it follows the policy the
    way the engine does: decide on exit, sleep the delay, then restart only
    if the restart is still pending (a manual stop may have cancelled it)."""

    policy: RestartPolicy
    state: RestartState = field(default_factory=RestartState)
    starts: list[float] = field(default_factory=list)
    exits: list[float] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    async def supervise(self, *, run_s=lambda n: 0.0, exit_code=1, runs=10_000):
        """Play runs until the policy stops; run number ``runs`` never ends.

        A policy that never stops fails the test after a virtual day."""
        with trio.fail_after(24 * 3600):
            await self._supervise(run_s, exit_code, runs)

    async def _supervise(self, run_s, exit_code, runs):
        while True:
            self.starts.append(trio.current_time())
            if len(self.starts) == runs:
                await trio.sleep_forever()
            duration_s = run_s(len(self.starts))
            await trio.sleep(duration_s)
            self.exits.append(trio.current_time())
            decision, self.state = exited(
                self.policy,
                self.state,
                code=exit_code,
                run_s=duration_s,
                now_s=trio.current_time(),
            )
            self.decisions.append(decision)
            if not decision.restart:
                return
            await trio.sleep(decision.delay_s)
            if not self.state.restart_pending:
                return
            self.state = restarted(self.state, trio.current_time())

    def gaps(self) -> list[float]:
        """G_k = start k - exit k-1, for k = 2 ..."""
        return [start - end for start, end in zip(self.starts[1:], self.exits)]


# ---- each policy -------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 137])
def test_policy_no_never_restarts(code):
    decision, state = exited(NO, RestartState(), code=code)
    assert decision == Decision(restart=False, delay_s=0.0, reason="policy is no")
    assert not state.restart_pending
    assert state.gave_up_reason is None


@pytest.mark.parametrize("policy", [ALWAYS, UNLESS_STOPPED])
@pytest.mark.parametrize("code", [0, 1, 143])
def test_always_and_unless_stopped_restart_after_any_exit(policy, code):
    decision, state = exited(policy, RestartState(), code=code, now_s=5.0)
    assert decision == Decision(restart=True, delay_s=0.1, reason="")
    assert state.next_restart_at_s == pytest.approx(5.1)
    assert state.current_delay_s == pytest.approx(0.1)


def test_on_failure_restarts_after_a_failure():
    decision, _ = exited(ON_FAILURE_3, RestartState(), code=3)
    assert decision.restart


def test_on_failure_does_not_restart_after_exit_0():
    decision, state = exited(ON_FAILURE_3, RestartState(), code=0)
    assert not decision.restart
    assert decision.reason == (
        "exit code 0 is not a failure, and the policy is on-failure"
    )
    assert state.gave_up_reason is None


@pytest.mark.parametrize("policy", [ALWAYS, UNLESS_STOPPED, ON_FAILURE, NO])
def test_a_requested_stop_never_restarts_and_is_remembered(policy):
    decision, state = exited(policy, RestartState(), code=137, stop=True)
    assert decision.restart is False
    assert decision.reason == "manually stopped"
    assert state.manually_stopped
    assert not state.restart_pending


async def test_on_failure_3_restarts_exactly_3_times_then_gives_up(autojump_clock):
    container = FakeContainer(ON_FAILURE_3)
    await container.supervise(exit_code=3)

    assert len(container.starts) == 4
    assert container.state.restart_count == 3
    last = container.decisions[-1]
    assert last.restart is False
    assert last.reason == "maximum retry count 3 reached"
    assert container.state.gave_up_reason == "maximum retry count 3 reached"
    assert container.state.gave_up_at_s == container.exits[-1]


async def test_on_failure_with_0_retries_is_unlimited(autojump_clock):
    container = FakeContainer(ON_FAILURE)
    with trio.move_on_after(300 * 61):  # 300 restarts, 60 s apart at most
        await container.supervise()

    assert container.state.restart_count >= 300
    assert all(decision.restart for decision in container.decisions)
    assert container.state.gave_up_reason is None


async def test_a_manual_start_gives_on_failure_its_retries_again(autojump_clock):
    container = FakeContainer(ON_FAILURE_3)
    await container.supervise(exit_code=3)
    container.state = manual_start(container.state)
    await container.supervise(exit_code=3)

    assert len(container.starts) == 8
    assert container.state.restart_count == 3
    assert container.decisions[-1].reason == "maximum retry count 3 reached"


def test_a_policy_that_gave_up_stays_down_on_later_exits():
    _, state = exited(ON_FAILURE_3, RestartState(restart_count=3), now_s=1.0)
    decision, later = exited(ON_FAILURE_3, state, now_s=9.0)
    assert not decision.restart
    assert decision.reason == "maximum retry count 3 reached"
    assert later.gave_up_at_s == 1.0


# ---- backoff -----------------------------------------------------------------


async def test_backoff_doubles_then_resets_after_a_10_s_run(autojump_clock):
    # C04: runs 1-6 fail at once, run 7 lasts 11 s, run 8 fails, run 9 stays up.
    container = FakeContainer(ALWAYS)
    with trio.move_on_after(60):
        await container.supervise(run_s=lambda n: 11.0 if n == 7 else 0.0, runs=9)

    gaps = container.gaps()
    assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 0.1, 0.2])
    assert container.state.restart_count == 8
    assert 2.0 <= gaps[5] <= 5.0
    assert container.starts[-1] - container.starts[0] <= 30


async def test_backoff_is_capped_at_60_s_over_hundreds_of_restarts(autojump_clock):
    container = FakeContainer(UNLESS_STOPPED)
    with trio.move_on_after(400 * 60):
        await container.supervise()

    gaps = container.gaps()
    assert len(gaps) > 300
    assert all(0.1 - 1e-9 <= gap <= 60 + 1e-9 for gap in gaps)
    assert gaps[:12] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 60, 60]
    )
    assert gaps[-1] == pytest.approx(60)


@pytest.mark.parametrize(("run_s", "expected_s"), [(9.99, 0.4), (10.0, 0.1)])
def test_backoff_resets_only_after_a_run_of_at_least_reset_after(run_s, expected_s):
    state = RestartState(nominal_delay_s=0.2)
    decision, _ = exited(ALWAYS, state, run_s=run_s)
    assert decision.delay_s == pytest.approx(expected_s)


def test_custom_backoff_follows_its_own_constants():
    policy = RestartPolicy("always", backoff=Backoff(1.0, 3.0, 20.0, 5.0))
    state, delays = RestartState(), []
    for now_s in range(6):
        decision, state = exited(policy, state, now_s=float(now_s))
        state = restarted(state, now_s + decision.delay_s)
        delays.append(decision.delay_s)
    assert delays == pytest.approx([1, 3, 9, 20, 20, 20])
    decision, _ = exited(policy, state, run_s=5.0)
    assert decision.delay_s == pytest.approx(1)


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999])
def test_jitter_keeps_the_delay_within_its_fraction_of_the_nominal(rand):
    policy = RestartPolicy("always", backoff=Backoff(jitter=0.2))
    state = RestartState()
    for restart in range(20):
        nominal_s = min(0.1 * 2**restart, 60)
        decision, state = exited(policy, state, now_s=100.0, rand=rand)
        assert nominal_s * 0.8 <= decision.delay_s < nominal_s * 1.2
        assert decision.delay_s == pytest.approx(nominal_s * (0.8 + 0.4 * rand))
        assert state.nominal_delay_s == pytest.approx(nominal_s)
        assert state.next_restart_at_s == pytest.approx(100.0 + decision.delay_s)
        state = restarted(state, 100.0 + decision.delay_s)


@pytest.mark.parametrize("rand", [-0.1, 1.0, 2.0])
def test_rand_outside_0_to_1_is_refused(rand):
    with pytest.raises(ValueError, match=r"rand must be in \[0, 1\)"):
        exited(ALWAYS, RestartState(), rand=rand)


# ---- start limit -------------------------------------------------------------


async def test_start_limit_gives_up_at_burst_plus_one_within_interval(autojump_clock):
    policy = RestartPolicy("always", start_limit=StartLimit(5, 10.0))
    container = FakeContainer(policy)
    await container.supervise()

    assert len(container.starts) == 6
    assert container.state.restart_count == 5
    reason = "start limit hit: 5 restarts within 10 s"
    assert container.decisions[-1] == Decision(False, 0.0, reason)
    assert container.state.gave_up_reason == reason
    assert container.state.gave_up_at_s == container.exits[-1]


async def test_start_limit_allows_restarts_spread_over_time(autojump_clock):
    # Each run lasts 6 s, so no 10 s window ever holds more than 2 restarts.
    policy = RestartPolicy(
        "on-failure", backoff=Backoff(factor=1.0), start_limit=StartLimit(2, 10.0)
    )
    container = FakeContainer(policy)
    with trio.move_on_after(600):
        await container.supervise(run_s=lambda n: 6.0)

    assert container.state.restart_count > 50
    assert container.state.gave_up_reason is None
    assert len(container.state.restarts_at_s) <= 2


def test_start_limit_counts_restarts_at_the_time_the_next_one_would_happen():
    policy = RestartPolicy("always", start_limit=StartLimit(3, 10.0))
    state = RestartState(nominal_delay_s=0.1, restarts_at_s=(0.0, 1.0, 2.0))

    decision, _ = exited(policy, state, run_s=8.0, now_s=9.7)  # due at 9.9
    assert decision.reason == "start limit hit: 3 restarts within 10 s"

    decision, state = exited(policy, state, run_s=8.0, now_s=9.85)  # due at 10.05
    assert decision.restart
    assert state.restarts_at_s == (1.0, 2.0)


def test_a_restart_exactly_one_interval_ago_is_outside_the_window():
    policy = RestartPolicy(
        "always", backoff=Backoff(initial_delay_s=0.5), start_limit=StartLimit(1, 8.0)
    )
    state = RestartState(restarts_at_s=(0.0,))
    assert exited(policy, state, now_s=7.5)[0].restart  # due at 8.0
    assert not exited(policy, state, now_s=7.25)[0].restart  # due at 7.75


def test_start_limit_reason_reads_well_for_a_burst_of_one():
    policy = RestartPolicy("always", start_limit=StartLimit(1, 0.5))
    state = RestartState(nominal_delay_s=0.1, restarts_at_s=(0.0,))
    decision, _ = exited(policy, state, now_s=0.1)
    assert decision.reason == "start limit hit: 1 restart within 0.5 s"


def test_a_given_up_always_policy_does_not_start_with_the_daemon():
    policy = RestartPolicy("always", start_limit=StartLimit(1, 10.0))
    _, state = exited(policy, RestartState(restarts_at_s=(0.0,)), now_s=1.0)
    assert state.gave_up_reason
    assert not should_start_on_daemon_start(policy, state, 1)


# ---- manual stop and start ---------------------------------------------------


async def test_a_manual_stop_during_backoff_cancels_the_restart_for_good(
    autojump_clock,
):
    # C02 (c02a): unless-stopped in a crash loop, stopped while it waits.
    container = FakeContainer(UNLESS_STOPPED)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(container.supervise)
            while not (
                container.state.restart_count >= 6 and container.state.restart_pending
            ):
                await trio.sleep(0.01)
            await trio.sleep(container.state.current_delay_s / 2)
            container.state = manual_stop(container.state)
            count, starts = container.state.restart_count, len(container.starts)
            await trio.sleep(container.state.current_delay_s + 3)
            nursery.cancel_scope.cancel()

    assert container.state.restart_count == count
    assert len(container.starts) == starts
    assert container.state.manually_stopped
    assert not container.state.restart_pending

    saved = json.loads(json.dumps(container.state.to_dict()))
    after_daemon_restart = RestartState.from_dict(saved)
    assert not should_start_on_daemon_start(UNLESS_STOPPED, after_daemon_restart, 1)
    assert after_daemon_restart.restart_count == count


def test_an_exit_after_a_manual_stop_is_not_restarted_even_unflagged():
    state = manual_stop(RestartState())
    decision, state = exited(ALWAYS, state, code=143, stop=False)
    assert decision.reason == "manually stopped"
    assert state.manually_stopped


def test_a_handled_signal_is_not_a_manual_stop():
    # C05: USR1 does not end the run; the later crash (exit 7) is no stop.
    decision, state = exited(UNLESS_STOPPED, RestartState(), code=7, now_s=2.0)
    assert decision.restart
    state = restarted(state, 2.1)
    assert state.restart_count == 1
    assert should_start_on_daemon_start(UNLESS_STOPPED, state, 7)

    decision, state = exited(UNLESS_STOPPED, state, code=137, stop=True, now_s=9.0)
    assert not decision.restart
    assert state.restart_count == 1
    assert not should_start_on_daemon_start(UNLESS_STOPPED, state, 137)


def test_a_manual_start_resets_count_delay_window_and_give_up():
    policy = RestartPolicy("always", start_limit=StartLimit(2, 10.0))
    crashed = RestartState(restart_count=2, nominal_delay_s=3.2, restarts_at_s=(0, 1))
    _, state = exited(policy, crashed, now_s=2.0)
    state = manual_stop(state)
    assert state.gave_up_reason
    assert state.manually_stopped

    state = manual_start(state)
    assert state == RestartState()
    decision, state = exited(policy, state, run_s=0.0, now_s=3.0)
    assert decision == Decision(restart=True, delay_s=0.1, reason="")


def test_recording_a_restart_that_is_not_pending_is_refused():
    state = manual_stop(exited(ALWAYS, RestartState())[1])
    with pytest.raises(ValueError, match="no automatic restart is pending"):
        restarted(state, 1.0)


# ---- daemon start ------------------------------------------------------------

STOPPED = manual_stop(RestartState())
EXHAUSTED = RestartState(restart_count=3)
GAVE_UP = RestartState(gave_up_reason="start limit hit: 5 restarts within 10 s")


@pytest.mark.parametrize(
    ("policy", "state", "last_exit_code", "expected"),
    [
        (NO, RestartState(), 1, False),
        (NO, RestartState(), 0, False),
        (ALWAYS, RestartState(), 0, True),
        (ALWAYS, STOPPED, 137, True),  # Docker's documented rule (C02 c02c)
        (ALWAYS, GAVE_UP, 1, False),
        (UNLESS_STOPPED, RestartState(), 0, True),  # never stopped (c02b)
        (UNLESS_STOPPED, RestartState(), 143, True),
        (UNLESS_STOPPED, STOPPED, 143, False),
        (ON_FAILURE_3, RestartState(), 1, True),
        (ON_FAILURE_3, RestartState(), 0, False),
        (ON_FAILURE_3, STOPPED, 137, False),
        (ON_FAILURE_3, EXHAUSTED, 3, False),  # C01: not revived
        (ON_FAILURE_3, GAVE_UP, 3, False),
        (ON_FAILURE, RestartState(restart_count=500), 1, True),
        (ALWAYS, RestartState(), None, False),  # never ran
    ],
)
def test_daemon_start_rules(policy, state, last_exit_code, expected):
    assert should_start_on_daemon_start(policy, state, last_exit_code) is expected


async def test_the_c02_matrix_survives_a_daemon_restart(autojump_clock):
    stopped_in_backoff = FakeContainer(UNLESS_STOPPED)  # c02a
    exhausted = FakeContainer(ON_FAILURE_3)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stopped_in_backoff.supervise)
            nursery.start_soon(exhausted.supervise)
            while stopped_in_backoff.state.restart_count < 6:
                await trio.sleep(0.01)
            stopped_in_backoff.state = manual_stop(stopped_in_backoff.state)
            nursery.cancel_scope.cancel()
    _, always_stopped = exited(ALWAYS, RestartState(), code=143, stop=True)  # c02c

    def reloaded(state):
        return RestartState.from_dict(json.loads(json.dumps(state.to_dict())))

    assert not should_start_on_daemon_start(
        UNLESS_STOPPED, reloaded(stopped_in_backoff.state), 1
    )
    assert should_start_on_daemon_start(ALWAYS, reloaded(always_stopped), 143)
    assert should_start_on_daemon_start(UNLESS_STOPPED, RestartState(), 143)  # c02b
    assert exhausted.state.restart_count == 3
    assert not should_start_on_daemon_start(ON_FAILURE_3, reloaded(exhausted.state), 3)


# ---- HostConfig --------------------------------------------------------------


def test_from_host_config_defaults_equal_dockers():
    policy = RestartPolicy.from_host_config({})
    assert policy == RestartPolicy("no", 0, Backoff(), StartLimit())
    assert policy.backoff == Backoff(0.1, 2.0, 60.0, 10.0, 0.0)
    assert policy.start_limit == StartLimit(None, None)
    empty = {"RestartPolicy": {"Name": "", "MaximumRetryCount": 0}}
    assert RestartPolicy.from_host_config(empty).name == "no"


def test_from_host_config_reads_the_docker_policy():
    host_config = {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}}
    assert RestartPolicy.from_host_config(host_config) == ON_FAILURE_3
    host_config = {"RestartPolicy": {"Name": "unless-stopped"}}
    assert RestartPolicy.from_host_config(host_config) == UNLESS_STOPPED


def test_from_host_config_parses_the_extension_fields():
    host_config = {
        "RestartPolicy": {"Name": "always"},
        "CorralRestartBackoff": {
            "InitialDelay": 500_000_000,
            "Factor": 1.5,
            "MaxDelay": 30_000_000_000,
            "ResetAfter": 120_000_000_000,
            "Jitter": 0.1,
        },
        "CorralStartLimit": {"Burst": 5, "Interval": 10_000_000_000},
    }
    policy = RestartPolicy.from_host_config(host_config)
    assert policy.backoff == Backoff(0.5, 1.5, 30.0, 120.0, 0.1)
    assert policy.start_limit == StartLimit(5, 10.0)


def test_zero_extension_fields_take_the_defaults_like_go_clients_send_them():
    host_config = {
        "CorralRestartBackoff": dict.fromkeys(
            ("Factor", "MaxDelay", "ResetAfter", "Jitter"), 0
        ),
        "CorralStartLimit": {"Burst": 0, "Interval": 0},
    }
    policy = RestartPolicy.from_host_config(host_config)
    assert policy.backoff == Backoff()
    assert policy.start_limit == StartLimit()
    validate_extensions({"CorralRestartBackoff": None, "CorralStartLimit": None})


def test_an_initial_delay_of_zero_restarts_without_delay_every_time():
    policy = RestartPolicy.from_host_config(
        {"RestartPolicy": {"Name": "always"}, **backoff(InitialDelay=0)}
    )
    assert policy.backoff == Backoff(initial_delay_s=0.0)
    state = RestartState()
    for _ in range(5):
        decision, state = decide(
            policy, state, exit_code=1, run_duration_s=0.01,
            stop_requested=False, now_s=0.0,
        )
        assert decision.delay_s == 0.0
        state = restarted(state, 0.0)
    assert state.restart_count == 5


def test_from_host_config_refuses_an_unknown_policy_name():
    with pytest.raises(ValueError, match="invalid restart policy 'bogus': use one of"):
        RestartPolicy.from_host_config({"RestartPolicy": {"Name": "bogus"}})


def backoff(**fields):
    return {"CorralRestartBackoff": fields}


def start_limit(**fields):
    return {"CorralStartLimit": fields}


@pytest.mark.parametrize(
    ("host_config", "message"),
    [
        (
            backoff(InitialDelay=-1),
            "invalid CorralRestartBackoff.InitialDelay -1: a delay cannot be negative",
        ),
        (
            backoff(MaxDelay=-5),
            "invalid CorralRestartBackoff.MaxDelay -5: a delay cannot be negative",
        ),
        (
            backoff(ResetAfter=-1),
            "invalid CorralRestartBackoff.ResetAfter -1: a delay cannot be negative",
        ),
        (
            backoff(InitialDelay=0.5),
            "invalid CorralRestartBackoff.InitialDelay 0.5: durations are whole",
        ),
        (
            backoff(Factor=0.5),
            "invalid CorralRestartBackoff.Factor 0.5: it must be at least 1",
        ),
        (
            backoff(Factor="two"),
            "invalid CorralRestartBackoff.Factor 'two': it must be a finite number",
        ),
        (
            backoff(Jitter=1),
            "invalid CorralRestartBackoff.Jitter 1: it is a fraction of the delay",
        ),
        (
            backoff(Jitter=-0.1),
            "invalid CorralRestartBackoff.Jitter -0.1: it is a fraction",
        ),
        (
            backoff(InitialDelay=2_000_000_000, MaxDelay=1_000_000_000),
            "invalid CorralRestartBackoff: MaxDelay 1 s is below InitialDelay 2 s",
        ),
        (
            backoff(MaxDelay=50_000_000),
            "MaxDelay 0.05 s is below InitialDelay 0.1 s",
        ),
        (
            backoff(Intial=1),
            "unknown field CorralRestartBackoff.Intial: the known fields are",
        ),
        (
            {"CorralRestartBackoff": [1, 2]},
            "invalid CorralRestartBackoff: it must be an object",
        ),
        (
            start_limit(Burst=-1, Interval=10_000_000_000),
            "invalid CorralStartLimit.Burst -1: it is the number of restarts",
        ),
        (
            start_limit(Burst=0, Interval=10_000_000_000),
            "invalid CorralStartLimit: Interval is set but Burst is 0 or missing",
        ),
        (
            start_limit(Burst=5, Interval=-1),
            "invalid CorralStartLimit.Interval -1: it must be a positive",
        ),
        (
            start_limit(Burst=5, Interval=0),
            "invalid CorralStartLimit: Burst is set but Interval is 0 or missing",
        ),
        (
            start_limit(Burst=True, Interval=10_000_000_000),
            "invalid CorralStartLimit.Burst True",
        ),
    ],
)
def test_validate_extensions_rejects_bad_values_with_a_clear_message(
    host_config, message
):
    with pytest.raises(ValueError) as error:
        validate_extensions(host_config)
    assert message in str(error.value)
    with pytest.raises(ValueError):
        RestartPolicy.from_host_config(host_config)


# ---- persistence -------------------------------------------------------------


def test_state_round_trips_through_json():
    state = RestartState(
        restart_count=7,
        nominal_delay_s=6.4,
        manually_stopped=True,
        restarts_at_s=(1.5, 2.5),
        gave_up_reason="start limit hit: 5 restarts within 10 s",
        gave_up_at_s=3.0,
        next_restart_at_s=None,
        current_delay_s=6.1,
    )
    text = json.dumps(state.to_dict())
    assert RestartState.from_dict(json.loads(text)) == state

    pending = exited(ALWAYS, RestartState(), now_s=4.0)[1]
    assert RestartState.from_dict(json.loads(json.dumps(pending.to_dict()))) == pending


def test_state_from_an_older_or_newer_record_loads():
    state = RestartState.from_dict({"restart_count": 2, "added_later": True})
    assert state == RestartState(restart_count=2)
