import pytest

from supervisor.health import (
    HealthConfig,
    HealthState,
    ProbeResult,
    check_healthcheck,
    merge_healthcheck,
)


def result(code: int) -> ProbeResult:
    return ProbeResult("s", "e", code, "")


def test_docker_defaults_apply_to_zero_fields():
    check = HealthConfig.from_config({"Test": ["CMD", "true"], "Interval": 0})
    assert (check.interval_s, check.timeout_s, check.retries) == (30.0, 30.0, 3)
    assert (check.start_period_s, check.start_interval_s) == (0.0, 5.0)


def test_none_and_empty_tests_mean_no_health_check():
    assert HealthConfig.from_config({"Test": ["NONE"]}) is None
    assert HealthConfig.from_config(None) is None


def test_shell_form_runs_through_sh_and_exec_form_runs_directly():
    assert HealthConfig(["CMD-SHELL", "test -f /x"]).command() == ["/bin/sh", "-c", "test -f /x"]
    assert HealthConfig(["CMD", "sleep", "30"]).command() == ["sleep", "30"]


def test_retries_failures_in_a_row_make_it_unhealthy_once():
    state = HealthState(retries=2)
    assert state.record(result(1), in_start_period=False) is None
    assert state.record(result(1), in_start_period=False) == "unhealthy"
    assert state.record(result(1), in_start_period=False) is None
    assert state.failing_streak == 3


def test_a_pass_makes_it_healthy_and_clears_the_streak():
    state = HealthState(retries=3)
    state.record(result(1), False)
    assert state.record(result(0), False) == "healthy"
    assert state.failing_streak == 0


def test_failures_in_the_start_period_do_not_count():
    state = HealthState(retries=1)
    assert state.record(result(1), in_start_period=True) is None
    assert (state.status, state.failing_streak) == ("starting", 0)
    assert state.record(result(1), in_start_period=False) == "unhealthy"


def test_the_log_keeps_the_last_five_results():
    state = HealthState(retries=3)
    for code in range(8):
        state.record(result(code), False)
    assert [r["ExitCode"] for r in state.view()["Log"]] == [3, 4, 5, 6, 7]


@pytest.mark.parametrize("doc, words", [
    ({"Test": "true"}, "list of strings"),
    ({"Test": ["RUN", "x"]}, "NONE, CMD or CMD-SHELL"),
    ({"Test": ["CMD"]}, "needs a command"),
    ({"Test": ["CMD", "x"], "Interval": 5}, "at least 1 ms"),
    ({"Test": ["CMD", "x"], "Retries": -1}, "Retries"),
])
def test_malformed_health_checks_are_refused_with_the_reason(doc, words):
    with pytest.raises(ValueError, match=words):
        check_healthcheck(doc)


IMAGE_CHECK = {"Test": ["CMD", "probe"], "Interval": 5_000_000_000, "Retries": 4}


def test_a_request_without_a_healthcheck_keeps_the_images():
    assert merge_healthcheck(None, IMAGE_CHECK) == IMAGE_CHECK
    assert merge_healthcheck({}, IMAGE_CHECK) == IMAGE_CHECK
    assert merge_healthcheck(None, None) is None


def test_request_fields_override_the_images_one_by_one_and_zeros_keep_them():
    merged = merge_healthcheck({"Retries": 1, "Interval": 0}, IMAGE_CHECK)
    assert merged == {**IMAGE_CHECK, "Retries": 1}
    merged = merge_healthcheck({"Test": ["CMD-SHELL", "other"]}, IMAGE_CHECK)
    assert merged["Test"] == ["CMD-SHELL", "other"]
    assert merged["Interval"] == 5_000_000_000


def test_none_disables_the_images_check_and_timings_alone_make_no_check():
    assert merge_healthcheck({"Test": ["NONE"]}, IMAGE_CHECK)["Test"] == ["NONE"]
    assert merge_healthcheck({"Retries": 2}, None) is None
