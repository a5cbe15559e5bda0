"""Pressure rules as a specification.

supervisor.pressure is pure state: each ResourceTracker is fed window shares
(on_sample) and kernel trigger wake-ups (on_trigger) at given times, and the
turns it answers ("high", "cleared", "act") are what users see as events and
actions. runtime.pressure is checked on text in the kernel's own format and
on what it tells users when a trigger cannot be set.
"""

import math

import pytest

from runtime import pressure as rt_pressure
from runtime.pressure import PressureError, Stall, Trigger
from supervisor.pressure import (
    DEFAULT_THRESHOLDS,
    PressureAction,
    PressureConfig,
    ResourceTracker,
    parse_action,
    parse_percent,
    parse_thresholds,
    share_percent,
)
from supervisor.units import parse_duration_s


def tracker(threshold=80.0, *, limit=None, duration_s=0.0, action="restart"):
    rule = None
    if limit is not None:
        rule = PressureAction("memory", limit, duration_s, action)
    return ResourceTracker(threshold, rule)


def play(t, samples):
    """Feed (time, share) samples; the turns as (time, turn) pairs."""
    return [(now, turn) for now, share in samples for turn in t.on_sample(now, share)]


def every_10_s(start_s, end_s, share):
    return [(float(now), share) for now in range(start_s, end_s + 1, 10)]


# ---- high and cleared ------------------------------------------------------


def test_a_share_below_the_threshold_does_not_turn_high():
    t = tracker(80.0)

    assert t.on_sample(1.0, 79.9) == []
    assert not t.high


def test_a_share_reaching_the_threshold_turns_high_once():
    t = tracker(80.0)

    assert t.on_sample(1.0, 80.0) == ["high"]
    assert t.on_sample(2.0, 95.0) == []
    assert t.high


def test_a_high_resource_stays_high_at_80_percent_of_its_threshold():
    t = tracker(80.0)
    t.on_sample(1.0, 90.0)

    assert t.on_sample(2.0, 64.0) == []
    assert t.high


def test_a_high_resource_stays_high_at_exactly_three_quarters_of_its_threshold():
    t = tracker(80.0)
    t.on_sample(1.0, 90.0)

    assert t.on_sample(2.0, 60.0) == []
    assert t.high


def test_a_high_resource_clears_below_three_quarters_of_its_threshold():
    t = tracker(80.0)
    t.on_sample(1.0, 90.0)

    assert t.on_sample(2.0, 59.9) == ["cleared"]
    assert not t.high


def test_a_share_hovering_at_the_threshold_does_not_flap():
    t = tracker(40.0)
    shares = [40.0, 39.0, 41.0, 31.0, 40.0, 30.0, 29.9, 39.9, 40.0]

    turns = play(t, list(enumerate(shares)))

    assert turns == [(0, "high"), (6, "cleared"), (8, "high")]


def test_a_cleared_resource_does_not_turn_high_again_below_the_threshold():
    t = tracker(20.0)
    t.on_sample(1.0, 25.0)
    t.on_sample(2.0, 0.0)

    assert t.on_sample(3.0, 19.0) == []
    assert t.on_sample(4.0, 20.0) == ["high"]


# ---- kernel triggers: a lower bound ----------------------------------------


def test_the_trigger_level_is_the_threshold_without_an_action():
    assert tracker(20.0).trigger_level == 20.0


def test_the_trigger_level_is_the_lower_of_threshold_and_action_limit():
    assert tracker(80.0, limit=60.0).trigger_level == 60.0
    assert tracker(20.0, limit=60.0).trigger_level == 20.0


def test_a_trigger_at_the_threshold_turns_the_resource_high_once():
    t = tracker(20.0)

    assert t.on_trigger(1.0) == ["high"]
    assert t.on_trigger(2.0) == []
    assert t.high


def test_a_trigger_never_clears_a_high_resource():
    t = tracker(20.0)
    t.on_sample(1.0, 50.0)

    assert t.on_trigger(2.0) == []
    assert t.high


def test_a_trigger_below_the_threshold_starts_the_action_count_but_not_high():
    t = tracker(80.0, limit=60.0, duration_s=30.0)

    assert t.on_trigger(5.0) == []
    assert not t.high
    assert t.above_limit_since_s == 5.0
    assert t.needs_samples


def test_a_trigger_does_not_restart_an_action_count_already_running():
    t = tracker(80.0, limit=60.0, duration_s=30.0)
    t.on_sample(0.0, 65.0)

    t.on_trigger(20.0)

    assert t.on_sample(30.0, 65.0) == ["act"]


def test_a_trigger_starts_no_action_count_when_its_level_is_below_the_limit():
    t = tracker(20.0, limit=60.0, duration_s=30.0)

    assert t.on_trigger(1.0) == ["high"]
    assert t.above_limit_since_s is None


def test_a_trigger_never_makes_the_action_due_by_itself():
    t = tracker(80.0, limit=60.0, duration_s=30.0)
    t.on_trigger(0.0)

    assert t.on_trigger(100.0) == []
    assert t.on_sample(101.0, 70.0) == ["act"]


# ---- actions ---------------------------------------------------------------


def test_an_action_is_due_once_the_share_stayed_above_the_limit_for_its_duration():
    t = tracker(80.0, limit=60.0, duration_s=30.0)

    turns = play(t, every_10_s(0, 30, 60.0))

    assert turns == [(30.0, "act")]


def test_an_action_is_not_due_a_moment_before_its_duration_has_passed():
    t = tracker(80.0, limit=60.0, duration_s=30.0)

    turns = play(t, [(0.0, 70.0), (10.0, 70.0), (29.9, 70.0)])

    assert turns == []
    assert t.needs_samples


def test_the_action_duration_counts_from_the_first_window_at_the_limit():
    t = tracker(80.0, limit=60.0, duration_s=30.0)

    turns = play(t, [(0.0, 10.0), (7.0, 60.0), (30.0, 70.0), (37.0, 70.0)])

    assert turns == [(37.0, "act")]


def test_a_window_below_the_limit_starts_the_action_count_again():
    t = tracker(80.0, limit=60.0, duration_s=30.0)
    samples = [(0.0, 70.0), (20.0, 70.0), (25.0, 59.9), (30.0, 70.0), (55.0, 70.0)]

    assert play(t, samples) == []
    assert t.on_sample(60.0, 70.0) == ["act"]


def test_an_action_is_due_once_while_the_share_stays_above_the_limit():
    t = tracker(80.0, limit=60.0, duration_s=30.0)

    turns = play(t, every_10_s(0, 120, 70.0))

    assert turns == [(30.0, "act")]


def test_an_action_without_duration_is_due_once_per_stretch_above_the_limit():
    t = tracker(80.0, limit=60.0, duration_s=0.0)

    turns = play(t, [(0.0, 70.0), (1.0, 70.0), (2.0, 70.0)])

    assert turns == [(0.0, "act")]


def test_an_action_is_due_again_in_a_later_stretch_above_the_limit():
    t = tracker(80.0, limit=60.0, duration_s=30.0)
    first = every_10_s(0, 30, 70.0)
    dip = [(40.0, 10.0)]
    second = every_10_s(50, 80, 70.0)

    turns = play(t, first + dip + second)

    assert turns == [(30.0, "act"), (80.0, "act")]


def test_high_and_act_can_be_due_in_the_same_window_high_first():
    t = tracker(50.0, limit=50.0, duration_s=0.0)

    assert t.on_sample(0.0, 50.0) == ["high", "act"]


def test_a_share_above_the_limit_without_an_action_never_acts():
    t = tracker(80.0)

    assert play(t, every_10_s(0, 600, 100.0)) == [(0.0, "high")]


# ---- needs_samples and peak ------------------------------------------------


def test_a_quiet_resource_needs_no_samples():
    t = tracker(80.0, limit=60.0, duration_s=30.0)
    t.on_sample(1.0, 10.0)

    assert not t.needs_samples


def test_a_high_resource_needs_samples_until_it_clears():
    t = tracker(80.0)
    t.on_sample(1.0, 90.0)
    assert t.needs_samples

    t.on_sample(2.0, 10.0)
    assert not t.needs_samples


def test_a_resource_counting_towards_an_action_needs_samples():
    t = tracker(80.0, limit=60.0, duration_s=30.0)
    t.on_sample(1.0, 65.0)
    assert t.needs_samples and not t.high

    t.on_sample(2.0, 10.0)
    assert not t.needs_samples


def test_peak_is_the_highest_share_seen_and_never_falls():
    t = tracker(80.0)

    play(t, [(0.0, 12.5), (1.0, 47.25), (2.0, 3.0), (3.0, 0.0)])

    assert t.peak == 47.25


def test_a_trigger_counts_its_level_towards_the_peak():
    t = tracker(20.0)
    t.on_sample(0.0, 5.0)

    t.on_trigger(1.0)

    assert t.peak == 20.0


# ---- share_percent ---------------------------------------------------------


@pytest.mark.parametrize(
    ("before_us", "after_us", "elapsed_s", "share"),
    [
        (0, 1_000_000, 2.0, 50.0),
        (123_456, 123_456, 2.0, 0.0),
        (5_000_000, 5_250_000, 1.0, 25.0),
        (0, 3_000_000, 2.0, 100.0),  # more stall than wall time is capped
        (2_000_000, 1_000_000, 2.0, 0.0),  # a total that went back counts as 0
        (0, 1_000_000, 0.0, 0.0),
        (0, 1_000_000, -1.0, 0.0),
    ],
)
def test_share_percent(before_us, after_us, elapsed_s, share):
    assert share_percent(before_us, after_us, elapsed_s) == pytest.approx(share)


# ---- parse_thresholds and parse_action (the CLI flags) ---------------------


def test_parse_thresholds_reads_percentages_and_keeps_the_other_defaults():
    thresholds = parse_thresholds("memory=20%, cpu=75.5")

    assert thresholds == {"cpu": 75.5, "memory": 20.0, "io": 40.0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "memory",
            (
                "invalid pressure threshold 'memory': use RESOURCE=PERCENT, "
                "e.g. memory=20%"
            ),
        ),
        (
            "memory=20%,",
            "invalid pressure threshold '': use RESOURCE=PERCENT, e.g. memory=20%",
        ),
        (
            "memory=lots",
            (
                "invalid pressure threshold of memory 'lots': give a percentage "
                "such as 20%"
            ),
        ),
        (
            "disk=20%",
            "invalid pressure resource 'disk': use one of cpu, memory, io",
        ),
        (
            "memory=0%",
            (
                "invalid pressure threshold of memory 0.0: give a percentage above 0 "
                "and at most 100"
            ),
        ),
        (
            "cpu=100.5%",
            (
                "invalid pressure threshold of cpu 100.5: give a percentage above 0 "
                "and at most 100"
            ),
        ),
        (
            "io=nan",
            (
                "invalid pressure threshold of io nan: give a percentage above 0 "
                "and at most 100"
            ),
        ),
    ],
)
def test_parse_thresholds_rejects(spec, message):
    with pytest.raises(ValueError) as caught:
        parse_thresholds(spec)

    assert str(caught.value) == message


def test_parse_thresholds_accepts_100_percent():
    assert parse_thresholds("io=100%")["io"] == 100.0


def test_parse_percent_takes_a_number_with_or_without_a_percent_sign():
    assert parse_percent(" 20% ", "limit") == 20.0
    assert parse_percent("12.5", "limit") == 12.5


def test_parse_action_reads_resource_limit_duration_and_action():
    rule = parse_action("memory:60%:1m30s:restart", parse_duration_s)

    assert rule == PressureAction("memory", 60.0, 90.0, "restart")


def test_parse_action_result_goes_into_host_config_in_nanoseconds():
    rule = parse_action("io:35%:500ms:kill", parse_duration_s)

    assert rule.to_host_config() == {
        "Resource": "io",
        "Limit": 35.0,
        "Duration": 500_000_000,
        "Action": "kill",
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "memory:60%:30s",
            (
                "invalid pressure action 'memory:60%:30s': use "
                "RESOURCE:LIMIT:DURATION:ACTION, e.g. memory:60%:30s:restart"
            ),
        ),
        (
            "memory:60%:30s:restart:now",
            (
                "invalid pressure action 'memory:60%:30s:restart:now': use "
                "RESOURCE:LIMIT:DURATION:ACTION, e.g. memory:60%:30s:restart"
            ),
        ),
        (
            "disk:60%:30s:restart",
            "invalid pressure resource 'disk': use one of cpu, memory, io",
        ),
        (
            "memory:most:30s:restart",
            "invalid pressure action limit 'most': give a percentage such as 20%",
        ),
        (
            "memory:0%:30s:restart",
            (
                "invalid pressure action limit 0.0: give a percentage above 0 and at "
                "most 100"
            ),
        ),
        (
            "memory:60%:30s:reboot",
            "invalid pressure action 'reboot': use one of restart, stop, kill",
        ),
        (
            "memory:60%:soon:stop",
            (
                "invalid duration 'soon': use a number with a unit, for example "
                "100ms, 5s, 1m or 1m30s"
            ),
        ),
    ],
)
def test_parse_action_rejects(spec, message):
    with pytest.raises(ValueError) as caught:
        parse_action(spec, parse_duration_s)

    assert str(caught.value) == message


def test_parse_action_rejects_a_negative_duration():
    with pytest.raises(ValueError) as caught:
        parse_action("cpu:50%:-5s:stop", lambda text: -5.0)

    assert str(caught.value) == (
        "invalid pressure action duration -5 s: it cannot be negative"
    )


# ---- PressureConfig.from_host_config (the API fields) ----------------------


def test_a_host_config_without_pressure_fields_takes_the_defaults():
    config = PressureConfig.from_host_config({"Memory": 1 << 30})

    assert config.thresholds == {"cpu": 80.0, "memory": 20.0, "io": 40.0}
    assert config.actions == []


def test_null_pressure_fields_take_the_defaults():
    config = PressureConfig.from_host_config(
        {"CorralPressureThresholds": None, "CorralPressureActions": None}
    )

    assert config.thresholds == DEFAULT_THRESHOLDS
    assert config.actions == []


def test_thresholds_given_replace_only_their_own_defaults():
    config = PressureConfig.from_host_config(
        {"CorralPressureThresholds": {"memory": 10, "io": 55.5}}
    )

    assert config.thresholds == {"cpu": 80.0, "memory": 10.0, "io": 55.5}


def test_actions_are_read_with_their_duration_in_seconds():
    config = PressureConfig.from_host_config(
        {
            "CorralPressureActions": [
                {
                    "Resource": "memory",
                    "Limit": 60,
                    "Duration": 30_000_000_000,
                    "Action": "restart",
                },
                {"Resource": "cpu", "Limit": 95.5, "Duration": 0, "Action": "stop"},
            ]
        }
    )

    assert config.actions == [
        PressureAction("memory", 60.0, 30.0, "restart"),
        PressureAction("cpu", 95.5, 0.0, "stop"),
    ]


def test_an_action_survives_the_round_trip_through_host_config():
    rule = PressureAction("io", 42.5, 1.25, "kill")

    config = PressureConfig.from_host_config(
        {"CorralPressureActions": [rule.to_host_config()]}
    )

    assert config.actions == [rule]


def test_trackers_cover_every_resource_with_its_threshold_and_action():
    rule = PressureAction("memory", 60.0, 30.0, "restart")
    config = PressureConfig(
        thresholds={"cpu": 90.0, "memory": 25.0, "io": 50.0}, actions=[rule]
    )

    trackers = config.trackers()

    assert sorted(trackers) == ["cpu", "io", "memory"]
    assert trackers["memory"].threshold == 25.0
    assert trackers["memory"].action == rule
    assert trackers["cpu"].action is None
    assert trackers["io"].threshold == 50.0


def action(**fields):
    item = {"Resource": "memory", "Limit": 60, "Duration": 0, "Action": "restart"}
    item.update(fields)
    return item


@pytest.mark.parametrize(
    ("host", "message"),
    [
        (
            {"CorralPressureThresholds": [20, 80]},
            (
                "invalid CorralPressureThresholds: it must be an object such as "
                '{"memory": 20, "cpu": 80} (percent)'
            ),
        ),
        (
            {"CorralPressureThresholds": {"disk": 20}},
            "invalid pressure resource 'disk': use one of cpu, memory, io",
        ),
        (
            {"CorralPressureThresholds": {"memory": 0}},
            (
                "invalid pressure threshold of memory 0: give a percentage above 0 "
                "and at most 100"
            ),
        ),
        (
            {"CorralPressureThresholds": {"cpu": 101}},
            (
                "invalid pressure threshold of cpu 101: give a percentage above 0 "
                "and at most 100"
            ),
        ),
        (
            {"CorralPressureThresholds": {"io": -5}},
            (
                "invalid pressure threshold of io -5: give a percentage above 0 "
                "and at most 100"
            ),
        ),
        (
            {"CorralPressureThresholds": {"memory": "20%"}},
            (
                "invalid pressure threshold of memory '20%': give a percentage above "
                "0 and at most 100"
            ),
        ),
        (
            {"CorralPressureThresholds": {"memory": True}},
            (
                "invalid pressure threshold of memory True: give a percentage above "
                "0 and at most 100"
            ),
        ),
        (
            {"CorralPressureThresholds": {"memory": math.inf}},
            (
                "invalid pressure threshold of memory inf: give a percentage above "
                "0 and at most 100"
            ),
        ),
        (
            {"CorralPressureActions": {"Resource": "memory"}},
            "invalid CorralPressureActions: it must be a list of objects",
        ),
        (
            {"CorralPressureActions": ["memory:60%:30s:restart"]},
            (
                "invalid pressure action 'memory:60%:30s:restart': give an object "
                "with Resource, Limit (percent), Duration (nanoseconds) and Action"
            ),
        ),
        (
            {"CorralPressureActions": [action(Signal="KILL")]},
            (
                "invalid pressure action {'Resource': 'memory', 'Limit': 60, "
                "'Duration': 0, 'Action': 'restart', 'Signal': 'KILL'}: give an "
                "object with Resource, Limit (percent), Duration (nanoseconds) and "
                "Action"
            ),
        ),
        (
            {"CorralPressureActions": [action(Resource="gpu")]},
            "invalid pressure resource 'gpu': use one of cpu, memory, io",
        ),
        (
            {"CorralPressureActions": [action(Resource=None)]},
            "invalid pressure resource None: use one of cpu, memory, io",
        ),
        (
            {"CorralPressureActions": [action(Limit=0)]},
            (
                "invalid pressure action limit 0: give a percentage above 0 and at "
                "most 100"
            ),
        ),
        (
            {"CorralPressureActions": [action(Limit=150)]},
            (
                "invalid pressure action limit 150: give a percentage above 0 and "
                "at most 100"
            ),
        ),
        (
            {"CorralPressureActions": [action(Limit="60")]},
            (
                "invalid pressure action limit '60': give a percentage above 0 and "
                "at most 100"
            ),
        ),
        (
            {"CorralPressureActions": [action(Action="pause")]},
            "invalid pressure action 'pause': use one of restart, stop, kill",
        ),
        (
            {"CorralPressureActions": [action(Duration=-1)]},
            "invalid pressure action duration -1: give whole nanoseconds, 0 or more",
        ),
        (
            {"CorralPressureActions": [action(Duration=1.5e9)]},
            (
                "invalid pressure action duration 1500000000.0: give whole "
                "nanoseconds, 0 or more"
            ),
        ),
        (
            {"CorralPressureActions": [action(Duration="30s")]},
            "invalid pressure action duration '30s': give whole nanoseconds, 0 or more",
        ),
        (
            {"CorralPressureActions": [action(Duration=True)]},
            "invalid pressure action duration True: give whole nanoseconds, 0 or more",
        ),
        (
            {
                "CorralPressureActions": [
                    {"Resource": "memory", "Limit": 60, "Action": "restart"}
                ]
            },
            "invalid pressure action duration None: give whole nanoseconds, 0 or more",
        ),
        (
            {"CorralPressureActions": [action(), action(Limit=90, Action="kill")]},
            "invalid pressure actions: give at most one action per resource",
        ),
    ],
)
def test_from_host_config_rejects(host, message):
    with pytest.raises(ValueError) as caught:
        PressureConfig.from_host_config(host)

    assert str(caught.value) == message


def test_one_action_per_resource_is_allowed_for_every_resource():
    config = PressureConfig.from_host_config(
        {"CorralPressureActions": [action(Resource=r) for r in ("cpu", "memory", "io")]}
    )

    assert [a.resource for a in config.actions] == ["cpu", "memory", "io"]


# ---- runtime.pressure: the kernel's pressure files -------------------------

MEMORY_PRESSURE = (
    "some avg10=1.50 avg60=0.20 avg300=0.00 total=123456\n"
    "full avg10=0.75 avg60=0.10 avg300=0.01 total=61728\n"
)


def test_parse_pressure_reads_some_and_full_lines():
    stalls = rt_pressure.parse_pressure(MEMORY_PRESSURE)

    assert stalls == {
        "some": Stall(avg10=1.5, avg60=0.2, avg300=0.0, total_us=123456),
        "full": Stall(avg10=0.75, avg60=0.1, avg300=0.01, total_us=61728),
    }


def test_parse_pressure_reads_a_file_with_only_a_some_line():
    stalls = rt_pressure.parse_pressure(
        "some avg10=12.04 avg60=8.91 avg300=2.33 total=9876543210\n"
    )

    assert list(stalls) == ["some"]
    assert stalls["some"].total_us == 9_876_543_210
    assert stalls["some"].avg10 == 12.04


def test_a_stall_is_shown_in_the_api_with_docker_style_keys():
    stall = rt_pressure.parse_pressure(MEMORY_PRESSURE)["some"]

    assert stall.to_dict() == {
        "Avg10": 1.5,
        "Avg60": 0.2,
        "Avg300": 0.0,
        "TotalMicroseconds": 123456,
    }


def test_read_pressure_reads_the_resource_file_of_a_cgroup(tmp_path):
    (tmp_path / "io.pressure").write_text(MEMORY_PRESSURE)

    assert rt_pressure.read_pressure(tmp_path, "io")["full"].total_us == 61728


def test_read_pressure_lets_a_missing_file_through_as_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        rt_pressure.read_pressure(tmp_path, "cpu")


def test_has_pressure_is_false_without_a_cgroup_or_its_pressure_files(tmp_path):
    assert not rt_pressure.has_pressure(None)
    assert not rt_pressure.has_pressure(tmp_path)
    assert not rt_pressure.has_pressure(tmp_path / "gone")


def test_has_pressure_is_true_where_cpu_pressure_can_be_read(tmp_path):
    (tmp_path / "cpu.pressure").write_text(MEMORY_PRESSURE)

    assert rt_pressure.has_pressure(tmp_path)


@pytest.mark.parametrize(
    ("wanted_us", "windows_us"),
    [
        (
            1_000_000,
            [1_000_000, 2_000_000, 4_000_000, 6_000_000, 8_000_000, 10_000_000],
        ),
        (2_000_000, [2_000_000, 4_000_000, 6_000_000, 8_000_000, 10_000_000]),
        (
            5_000_000,
            [5_000_000, 4_000_000, 6_000_000, 2_000_000, 8_000_000, 10_000_000],
        ),
        (
            7_500_000,
            [7_500_000, 8_000_000, 6_000_000, 10_000_000, 4_000_000, 2_000_000],
        ),
        (100_000, [500_000, 2_000_000, 4_000_000, 6_000_000, 8_000_000, 10_000_000]),
        (60_000_000, [10_000_000, 8_000_000, 6_000_000, 4_000_000, 2_000_000]),
    ],
)
def test_candidate_windows_try_the_wanted_one_then_2_s_steps_nearest_first(
    wanted_us, windows_us
):
    assert rt_pressure.candidate_windows_us(wanted_us) == windows_us


def test_no_window_is_picked_where_the_cgroup_has_no_cpu_pressure(tmp_path):
    assert rt_pressure.pick_window_us(tmp_path, 1_000_000) is None


def test_a_trigger_that_cannot_be_set_says_where_what_and_why(tmp_path):
    path = tmp_path / "memory.pressure"

    with pytest.raises(PressureError) as caught:
        Trigger(path, "some", 200_000, 2_000_000)

    assert str(caught.value) == (
        f"cannot set a pressure trigger on {path} (some 200000 us in 2000000 us): "
        "no such file or directory"
    )
