"""`corral logs` and GET /containers/{id}/logs against a real corrald: both
streams, order, --tail, -t, since, follow and json-file rotation."""

import calendar
import re
import time
from pathlib import Path

from daemon import frames, line_queue

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{9})Z (.*)$")


def unix_ns(rfc3339_main: str, nanos: str) -> int:
    seconds = calendar.timegm(time.strptime(rfc3339_main, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(nanos)


def run_to_end(daemon, name: str, *command: str) -> None:
    daemon.cli("run", "--name", name, *command)


def test_logs_keep_stdout_and_stderr_apart_and_in_order(daemon, name):
    # The pauses order lines across the two pipes; within a pipe order is kept.
    run_to_end(
        daemon,
        name,
        "busybox:test",
        "sh",
        "-c",
        "echo out-1; sleep 0.1; echo err-1 >&2; sleep 0.1; echo out-2; "
        "sleep 0.1; echo err-2 >&2",
    )

    response = daemon.client.open(
        "GET", f"/containers/{name}/logs", {"stdout": 1, "stderr": 1}
    )
    cli = daemon.cli("logs", name, check=True)

    assert frames(response) == [
        (1, b"out-1\n"),
        (2, b"err-1\n"),
        (1, b"out-2\n"),
        (2, b"err-2\n"),
    ]
    assert (cli.stdout, cli.stderr) == ("out-1\nout-2\n", "err-1\nerr-2\n")


def test_logs_of_one_stream_only_leave_out_the_other(daemon, name):
    run_to_end(daemon, name, "busybox:test", "sh", "-c", "echo out; echo err >&2")

    response = daemon.client.open("GET", f"/containers/{name}/logs", {"stderr": 1})

    assert frames(response) == [(2, b"err\n")]


def test_logs_tail_shows_the_last_lines(daemon, name):
    run_to_end(daemon, name, "busybox:test", "seq", "1", "100")

    assert daemon.cli("logs", "--tail", "3", name, check=True).stdout == "98\n99\n100\n"
    assert daemon.cli("logs", "--tail", "0", name, check=True).stdout == ""
    assert (
        daemon.cli("logs", "--tail", "all", name, check=True).stdout.count("\n") == 100
    )


def test_logs_t_prefixes_each_line_with_its_rfc3339_time(daemon, name):
    before_ns = time.time_ns()
    run_to_end(daemon, name, "busybox:test", "sh", "-c", "echo one; echo two")
    after_ns = time.time_ns()

    lines = daemon.cli("logs", "-t", name, check=True).stdout.splitlines()

    matches = [STAMP.match(line) for line in lines]
    assert all(matches), lines
    assert [m.group(3) for m in matches] == ["one", "two"]
    stamps = [unix_ns(m.group(1), m.group(2)) for m in matches]
    assert before_ns <= stamps[0] <= stamps[1] <= after_ns


def test_logs_since_leaves_out_earlier_lines(daemon, name):
    run_to_end(
        daemon, name, "busybox:test", "sh", "-c", "echo early; sleep 0.2; echo late"
    )
    lines = daemon.cli("logs", "-t", name, check=True).stdout.splitlines()
    late = STAMP.match(lines[1])
    late_ns = unix_ns(late.group(1), late.group(2))
    seconds, nanos = divmod(late_ns, 1_000_000_000)

    since_late = daemon.cli(
        "logs", "--since", f"{seconds}.{nanos:09d}", name, check=True
    )
    since_before = daemon.cli("logs", "--since", str(seconds - 60), name, check=True)

    assert since_late.stdout == "late\n"
    assert since_before.stdout == "early\nlate\n"


def test_logs_follow_streams_new_lines_and_ends_when_the_container_stops(daemon, name):
    daemon.run_detached(
        "--name",
        name,
        "busybox:test",
        "sh",
        "-c",
        'trap "echo second; exit 0" USR1; echo first; while :; do sleep 1 & wait; done',
    )
    follower = daemon.cli_popen("logs", "-f", name)
    lines = line_queue(follower)
    try:
        assert lines.get(timeout=10) == "first\n"
        assert follower.poll() is None

        daemon.cli("kill", "-s", "USR1", name, check=True)

        assert lines.get(timeout=10) == "second\n"
        assert follower.wait(timeout=10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_logs_follow_of_an_exited_container_prints_everything_and_returns(daemon, name):
    run_to_end(daemon, name, "busybox:test", "echo", "done")

    result = daemon.cli("logs", "-f", name, timeout=10)

    assert (result.returncode, result.stdout) == (0, "done\n")


def test_log_rotation_keeps_max_file_files_of_max_size_with_the_newest_lines(
    daemon, name
):
    run_to_end(
        daemon,
        name,
        "--log-opt",
        "max-size=1k",
        "--log-opt",
        "max-file=2",
        "busybox:test",
        "seq",
        "1",
        "500",
    )
    log_path = Path(daemon.inspect(name)["LogPath"])

    files = sorted(log_path.parent.glob(log_path.name + "*"))
    assert files == [log_path, log_path.with_name(log_path.name + ".1")]
    assert all(path.stat().st_size <= 1024 for path in files)
    numbers = [int(n) for n in daemon.cli("logs", name, check=True).stdout.split()]
    assert numbers[-1] == 500
    assert numbers == list(range(numbers[0], 501))
    assert 1 < numbers[0]
    assert daemon.inspect(name)["HostConfig"]["LogConfig"]["Config"] == {
        "max-size": "1k",
        "max-file": "2",
    }


def test_logs_of_an_unknown_container_fail_with_its_name(daemon):
    result = daemon.cli("logs", "no-such-container-for-logs")

    assert result.returncode == 1
    assert "No such container: no-such-container-for-logs" in result.stderr


def test_logs_without_a_stream_are_refused(daemon, name):
    run_to_end(daemon, name, "busybox:test", "true")

    reply = daemon.request("GET", f"/containers/{name}/logs")

    assert reply.status == 400
    assert "choose at least one stream" in reply.json()["message"]
