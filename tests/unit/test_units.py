import pytest

from supervisor.status import human_duration, human_status
from supervisor.units import format_size, parse_duration_s, parse_size


@pytest.mark.parametrize("text, size", [("64m", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10),
                                        ("100", 100), ("1.5g", 3 << 29), ("64MB", 64 << 20)])
def test_sizes_parse_in_docker_notation(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-5m", "5x"])
def test_bad_sizes_say_what_a_size_looks_like(text):
    with pytest.raises(ValueError, match="for example 64m"):
        parse_size(text)


@pytest.mark.parametrize("text, seconds", [("100ms", 0.1), ("1m30s", 90.0), ("2h", 7200.0),
                                           ("0", 0.0), ("1ns", 1e-9), ("1.5s", 1.5)])
def test_durations_parse_in_go_notation(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "5 s", "1m-2s", "s"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="for example"):
        parse_duration_s(text)


def test_sizes_print_like_docker_tables():
    assert format_size(1_982_000) == "1.982MB"
    assert format_size(999) == "999B"


@pytest.mark.parametrize("seconds, text", [(0.2, "Less than a second"), (1, "1 second"),
                                           (45, "45 seconds"), (90, "About a minute"),
                                           (600, "10 minutes"), (3600, "About an hour"),
                                           (5 * 3600, "5 hours"), (3 * 86400, "3 days")])
def test_durations_read_like_docker_ps(seconds, text):
    assert human_duration(seconds) == text


def test_status_column_reads_like_docker_ps():
    state = {"Status": "exited", "ExitCode": 3, "FinishedAt": "2024-01-01T00:00:00Z",
             "StartedAt": "2024-01-01T00:00:00Z", "Restarting": False}
    assert human_status(state, now_s=1704067200 + 120) == "Exited (3) 2 minutes ago"
    state.update(Status="running")
    assert human_status(state, now_s=1704067200 + 5) == "Up 5 seconds"
    for health, shown in (("starting", "Up 5 seconds (health: starting)"),
                          ("healthy", "Up 5 seconds (healthy)"),
                          ("unhealthy", "Up 5 seconds (unhealthy)")):
        state["Health"] = {"Status": health}
        assert human_status(state, now_s=1704067200 + 5) == shown
