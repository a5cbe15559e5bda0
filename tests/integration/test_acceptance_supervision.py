"""Supervision, driven like a user would: restart policies and their backoff,
stop and kill semantics, health checks, exec, --init and the event stream.

The tests named test_cNN_* are the acceptance cases of the same id
(C01-C05, C07, C09, C18), with their assertions and tolerances. Timings
are the cases' own; set SLOW to a factor above 1 on a slow host to stretch
the waits and the upper time bounds.

Cases that restart the daemon use a daemon of their own (`fresh_daemon`),
where plain case names (c01, c02a, ...) are unique; the others share the
session's daemon and prefix their names with the `name` fixture.
"""

import concurrent.futures
import json
import os
import time
from datetime import datetime
from urllib.parse import urlencode

import pytest
from daemon import Daemon, holds_for, unique_name, wait_until
from imagebuild import busybox_image, write_docker_archive

SLOW = float(os.environ.get("SLOW", "1"))
COUNTER_SH = "n=$(cat /n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /n; "


# ---- helpers -------------------------------------------------------------------


def state(d: Daemon, ref: str) -> dict:
    return d.inspect(ref)["State"]


def restart_count(d: Daemon, ref: str) -> int:
    return d.inspect(ref)["RestartCount"]


def status_and_restarting(d: Daemon, ref: str) -> tuple[str, bool]:
    current = state(d, ref)
    return current["Status"], current["Restarting"]


def log_count(d: Daemon, ref: str, text: str) -> int:
    return d.cli("logs", ref, check=True).stdout.splitlines().count(text)


def actions(events: list[dict], *wanted: str) -> list[tuple[str, str]]:
    """(Action, signal or exitCode) of the events whose Action is wanted,
    or of every event when none is named."""
    found = []
    for event in events:
        if not wanted or event["Action"] in wanted:
            attrs = event["Actor"]["Attributes"]
            found.append(
                (event["Action"], attrs.get("signal", attrs.get("exitCode", "")))
            )
    return found


def times_of(events: list[dict], action: str) -> list[float]:
    return [e["timeNano"] / 1e9 for e in events if e["Action"] == action]


def processes(d: Daemon, ref: str) -> list[tuple[int, str, str]]:
    """(pid, stat, args) of every process in the container, from its own ps."""
    out = d.cli("exec", ref, "ps", "-o", "pid,stat,args", check=True).stdout
    rows = []
    for line in out.splitlines()[1:]:
        pid, stat, args = line.split(None, 2)
        rows.append((int(pid), stat, args))
    return rows


def runs(d: Daemon, ref: str, args: str) -> bool:
    """Whether a process other than PID 1 runs exactly `args`."""
    return any(pid != 1 and a == args for pid, _, a in processes(d, ref))


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def timed(d: Daemon, *args) -> float:
    started = time.monotonic()
    d.cli(*args, check=True)
    return time.monotonic() - started


# ---- C01: on-failure:N restarts exactly N times --------------------------------


def test_c01_on_failure_restarts_exactly_n_times_and_counts_only_automatic_restarts(
    fresh_daemon,
):
    d = fresh_daemon
    t0 = time.time_ns()
    c01 = d.run_detached(
        "--name",
        "c01",
        "--restart",
        "on-failure:3",
        "busybox:test",
        "sh",
        "-c",
        "echo attempt; exit 3",
    )

    def exited() -> bool:
        return status_and_restarting(d, "c01") == ("exited", False)

    wait_until(exited, 10 * SLOW, message="c01 exited and not restarting")
    holds_for(exited, 2, message="c01 exited and not restarting")

    doc = d.inspect("c01")
    assert (doc["RestartCount"], doc["State"]["ExitCode"]) == (3, 3)
    assert log_count(d, "c01", "attempt") == 4
    events = d.events(t0, container=[c01])
    assert actions(events, "start", "die") == [("start", ""), ("die", "3")] * 4

    c01ok = d.run_detached(
        "--name",
        "c01ok",
        "--restart",
        "on-failure:3",
        "busybox:test",
        "sh",
        "-c",
        "exit 0",
    )
    d.run_detached(
        "--name",
        "c01inf",
        "--restart",
        "on-failure",
        "busybox:test",
        "sh",
        "-c",
        "exit 1",
    )
    wait_until(
        lambda: restart_count(d, "c01inf") >= 4,
        3 * SLOW,
        message="c01inf restarted at least 4 times",
    )
    assert d.inspect("c01inf")["HostConfig"]["RestartPolicy"] == {
        "Name": "on-failure",
        "MaximumRetryCount": 0,
    }
    d.cli("rm", "-f", "c01inf", check=True)
    doc = d.inspect("c01ok")
    assert (doc["RestartCount"], doc["State"]["Status"], doc["State"]["ExitCode"]) == (
        0,
        "exited",
        0,
    )
    assert actions(d.events(t0, container=[c01ok]), "start") == [("start", "")]

    restarting_at = time.time_ns()
    d.restart()
    holds_for(
        lambda: (restart_count(d, "c01"), state(d, "c01")["Status"]) == (3, "exited"),
        3,
        message="c01 exited with RestartCount 3 after the daemon restart",
    )
    assert times_of(d.events(restarting_at, container=[c01]), "start") == []

    d.cli("start", "c01", check=True)
    wait_until(
        lambda: exited() and restart_count(d, "c01") == 3,
        10 * SLOW,
        message="c01 exhausted its retries again",
    )
    assert log_count(d, "c01", "attempt") == 8


# ---- C02: a stop during backoff is a manual stop, across a daemon restart ------


def stop_during_backoff(d: Daemon, name: str, landing_s: float | None) -> int:
    """C02's c02a procedure up to the daemon restart; returns RC.

    With landing_s None the stop lands as soon as the container is seen
    restarting, as the case does; otherwise landing_s after the restart is
    due, while that restart may be launching.
    """
    d.run_detached(
        "--name",
        name,
        "--restart",
        "unless-stopped",
        "busybox:test",
        "sh",
        "-c",
        "exit 1",
    )
    wait_until(
        lambda: restart_count(d, name) >= 6,
        15 * SLOW,
        message=f"{name} restarted 6 times",
    )
    wait_until(
        lambda: state(d, name)["Restarting"],
        5 * SLOW,
        message=f"{name} in its backoff window",
    )
    if landing_s is None:
        d.cli("stop", "-t", "1", name, check=True)
    else:
        due = datetime.fromisoformat(state(d, name)["CorralRestart"]["NextRestartAt"])
        time.sleep(max(0.0, due.timestamp() + landing_s - time.time()))
        # The API, not the CLI, so the stop lands within a few ms of its aim.
        d.request("POST", f"/containers/{name}/stop?t=1")
    rc = restart_count(d, name)
    holds_for(
        lambda: (
            (*status_and_restarting(d, name), restart_count(d, name))
            == ("exited", False, rc)
        ),
        3,
        message=f"{name} exited, not restarting, RestartCount {rc}",
    )
    return rc


# The race is timing dependent, so the five c02a procedures run side by side
# and land their stops at different points: where the case does, and at the
# moment the restart is due, when the restart is launching.
C02_LANDINGS_S = {
    "c02a-1": None,
    "c02a-2": 0.0,
    "c02a-3": 0.005,
    "c02a-4": 0.01,
    "c02a-5": 0.02,
}


def test_c02_a_stop_during_backoff_survives_a_daemon_restart_5_of_5(fresh_daemon):
    d = fresh_daemon
    with concurrent.futures.ThreadPoolExecutor(len(C02_LANDINGS_S)) as pool:
        futures = {
            name: pool.submit(stop_during_backoff, d, name, landing_s)
            for name, landing_s in C02_LANDINGS_S.items()
        }
        counts = {name: future.result() for name, future in futures.items()}
    # --stop-timeout 1 only shortens the daemon's shutdown: sleep ignores TERM.
    d.run_detached(
        "--name",
        "c02b",
        "--restart",
        "unless-stopped",
        "--stop-timeout",
        "1",
        "busybox:test",
        "sleep",
        "600",
    )
    d.run_detached(
        "--name", "c02c", "--restart", "always", "busybox:test", "sleep", "600"
    )
    d.cli("stop", "-t", "1", "c02c", check=True)

    restarting_at = time.time_ns()
    d.restart()
    wait_until(
        lambda: state(d, "c02b")["Running"] and state(d, "c02c")["Running"],
        5 * SLOW,
        message="c02b and c02c running",
    )
    holds_for(
        lambda: all(
            (state(d, n)["Status"], restart_count(d, n)) == ("exited", counts[n])
            for n in counts
        ),
        5,
        message="every c02a exited with its RestartCount",
    )

    assert state(d, "c02b")["Status"] == "running"
    assert state(d, "c02c")["Status"] == "running"
    for n in counts:
        assert times_of(d.events(restarting_at, container=[n]), "start") == [], n


# ---- C03: invalid restart policies are a clear 400 -----------------------------


def create_with(d: Daemon, host_config: dict):
    body = {"Image": "busybox:test", "Cmd": ["true"], "HostConfig": host_config}
    return d.request(
        "POST",
        "/containers/create",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )


def container_count(d: Daemon) -> int:
    return len(d.cli("ps", "-aq", check=True).stdout.split())


@pytest.mark.parametrize(
    ("host_config", "words"),
    [
        pytest.param(
            {"RestartPolicy": {"Name": "always", "MaximumRetryCount": 3}},
            ["maximum retry count", "on-failure"],
            id="A-count-with-always",
        ),
        pytest.param(
            {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": -1}},
            ["cannot be negative"],
            id="B-negative-count",
        ),
        pytest.param(
            {"RestartPolicy": {"Name": "bogus"}},
            ["bogus", "no", "always", "on-failure", "unless-stopped"],
            id="C-unknown-name",
        ),
        pytest.param(
            {"AutoRemove": True, "RestartPolicy": {"Name": "unless-stopped"}},
            ["AutoRemove", "restart policy"],
            id="D-autoremove-with-policy",
        ),
    ],
)
def test_c03_an_invalid_restart_policy_is_a_400_that_says_what_is_wrong(
    daemon, host_config, words
):
    before = container_count(daemon)

    reply = create_with(daemon, host_config)

    assert reply.status == 400
    message = reply.json()["message"]
    for word in words:
        assert word in message
    assert container_count(daemon) == before


@pytest.mark.parametrize(
    ("host_config", "stored"),
    [
        pytest.param(
            {"AutoRemove": True, "RestartPolicy": {"Name": "no"}},
            {"Name": "no", "MaximumRetryCount": 0},
            id="E-autoremove-with-no",
        ),
        pytest.param(
            {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 0}},
            {"Name": "on-failure", "MaximumRetryCount": 0},
            id="F-on-failure-unlimited",
        ),
        pytest.param(
            {"RestartPolicy": {"Name": ""}},
            {"Name": "no", "MaximumRetryCount": 0},
            id="G-empty-name",
        ),
    ],
)
def test_c03_a_valid_restart_policy_is_created_and_stored_as_meant(
    daemon, host_config, stored
):
    reply = create_with(daemon, host_config)

    assert reply.status == 201
    container_id = reply.json()["Id"]
    try:
        assert daemon.inspect(container_id)["HostConfig"]["RestartPolicy"] == stored
    finally:
        daemon.api("DELETE", f"/containers/{container_id}", force=1)


def test_c03_run_rm_with_restart_exits_125_naming_both_flags(daemon):
    before = container_count(daemon)

    result = daemon.cli("run", "--rm", "--restart", "always", "busybox:test", "true")

    assert result.returncode == 125
    assert "--rm" in result.stderr and "--restart" in result.stderr
    assert container_count(daemon) == before


def test_c03_run_rm_exits_0_and_the_container_is_gone_once_waited_for(daemon, name):
    result = daemon.cli("run", "--rm", "--name", name, "busybox:test", "true")

    assert result.returncode == 0
    waited = daemon.request("POST", f"/containers/{name}/wait?condition=removed")
    assert waited.status in (200, 404)
    assert daemon.request("GET", f"/containers/{name}/json").status == 404


# ---- C04: backoff grows, is capped, and resets ---------------------------------


def test_c04_backoff_doubles_from_100ms_and_resets_after_a_10s_run(daemon, case):
    script = COUNTER_SH + (
        'echo "run $n"\n'
        "[ $n -eq 7 ] && sleep 11\n"
        "[ $n -ge 9 ] && exec sleep 600\n"
        "exit 1"
    )
    started = time.monotonic()
    t0 = time.time_ns()
    c04 = daemon.run_detached(
        "--name", case, "--restart", "always", "busybox:test", "sh", "-c", script
    )

    wait_until(
        lambda: restart_count(daemon, case) >= 8, 40 * SLOW, message="8 restarts"
    )
    time.sleep(1)

    events = daemon.events(t0, container=[c04])
    starts, dies = times_of(events, "start"), times_of(events, "die")
    assert (len(starts), len(dies)) == (9, 8)
    gaps = {k: starts[k - 1] - dies[k - 2] for k in range(2, 10)}  # G_k, k = 2..9
    assert gaps[2] <= 0.5, gaps
    for k in range(3, 8):
        assert gaps[k] >= gaps[k - 1], gaps
        assert gaps[k] >= 1.5 * gaps[k - 1] - 0.05, gaps
    assert 2.0 <= gaps[7] <= 5.0, gaps
    assert dies[6] - starts[6] >= 10, "run 7 lasted at least 10 s"
    assert gaps[8] <= 0.5, gaps
    assert gaps[9] <= 1.0, gaps
    doc = daemon.inspect(case)
    assert (doc["RestartCount"], doc["State"]["Running"]) == (8, True)
    assert time.monotonic() - started <= 30 * SLOW


# ---- C05: a signal the app handles is not a manual stop ------------------------


def test_c05_a_handled_signal_is_not_a_manual_stop_but_sigkill_is(fresh_daemon):
    d = fresh_daemon
    script = (
        'rm -f /tmp/die; trap "echo got-usr1" USR1; '
        "while [ ! -f /tmp/die ]; do sleep 0.2; done; exit 7"
    )
    # --stop-timeout 1 only shortens the daemon's shutdown: the loop
    # ignores TERM.
    d.run_detached(
        "--name",
        "c05",
        "--restart",
        "unless-stopped",
        "--stop-timeout",
        "1",
        "busybox:test",
        "sh",
        "-c",
        script,
    )
    # The loop runs, so the trap is in place.
    wait_until(lambda: runs(d, "c05", "sleep 0.2"), 5 * SLOW, message="c05's loop")

    d.cli("kill", "-s", "USR1", "c05", check=True)
    wait_until(
        lambda: log_count(d, "c05", "got-usr1") >= 1,
        2 * SLOW,
        message="got-usr1 in c05's log",
    )
    assert state(d, "c05")["Running"] is True
    assert log_count(d, "c05", "got-usr1") == 1

    d.cli("exec", "c05", "touch", "/tmp/die", check=True)
    wait_until(
        lambda: (restart_count(d, "c05"), state(d, "c05")["Running"]) == (1, True),
        5 * SLOW,
        message="c05 restarted once after exit 7",
    )

    d.cli("kill", "-s", "USR1", "c05", check=True)
    d.restart()
    wait_until(
        lambda: state(d, "c05")["Running"],
        5 * SLOW,
        message="c05 running after the daemon restart",
    )

    count = restart_count(d, "c05")
    d.cli("kill", "c05", check=True)

    def killed() -> bool:
        shown = state(d, "c05")
        return (shown["Status"], shown["ExitCode"], restart_count(d, "c05")) == (
            "exited",
            137,
            count,
        )

    wait_until(killed, 5 * SLOW, message="c05 exited 137")
    holds_for(killed, 5, message="c05 exited 137 with its RestartCount")


# ---- C07: stop waits exactly the timeout; graceful exits give 143 --------------

LOOP_SH = ["sh", "-c", "while :; do sleep 1; done"]
TRAP_SH = ["sh", "-c", 'trap "exit 143" TERM; while :; do sleep 0.1; done']
KILLED = [("kill", "15"), ("kill", "9"), ("die", "137")]
NO_SIGKILL = "no signal=9 event"


@pytest.mark.parametrize(
    ("options", "command", "ready", "action", "min_s", "max_s", "code", "signals"),
    [
        pytest.param(
            [],
            LOOP_SH,
            "sleep 1",
            ["stop", "-t", "3"],
            3.0,
            4.5,
            137,
            KILLED,
            id="c07a-ignores-term",
        ),
        pytest.param(
            [],
            TRAP_SH,
            "sleep 0.1",
            ["stop", "-t", "10"],
            0,
            1.5,
            143,
            NO_SIGKILL,
            id="c07b-traps-term",
        ),
        # The init forwards TERM and exits 128+15.
        pytest.param(
            ["--init"],
            ["sleep", "300"],
            "sleep 300",
            ["stop", "-t", "10"],
            0,
            1.5,
            143,
            NO_SIGKILL,
            id="c07c-init",
        ),
        pytest.param(
            ["--stop-timeout", "2"],
            LOOP_SH,
            "sleep 1",
            ["stop"],
            2.0,
            3.5,
            137,
            None,
            id="c07d-stop-timeout",
        ),
        pytest.param(
            [], ["sleep", "300"], None, ["kill"], 0, 1.0, 137, None, id="c07e-kill"
        ),
        pytest.param(
            [],
            LOOP_SH,
            "sleep 1",
            ["stop", "-t", "0"],
            0,
            1.0,
            137,
            None,
            id="c07f-no-grace",
        ),
    ],
)
def test_c07_stop_and_kill_take_the_expected_time_and_exit_code(
    daemon, case, options, command, ready, action, min_s, max_s, code, signals
):
    container_id = daemon.run_detached(
        "--name", case, *options, "busybox:test", *command
    )
    if ready:
        # The command runs, so any trap or signal forwarding is in place.
        wait_until(
            lambda: runs(daemon, case, ready),
            5 * SLOW,
            message=f"{ready!r} running in the container",
        )
    t0 = time.time_ns()

    elapsed = timed(daemon, *action, case)

    assert min_s <= elapsed <= max_s * SLOW
    waited = daemon.cli("wait", case, check=True).stdout
    doc = daemon.inspect(case)
    assert (doc["State"]["ExitCode"], doc["State"]["OOMKilled"]) == (code, False)
    assert waited == f"{code}\n"
    sent = actions(daemon.events(t0, container=[container_id]), "kill", "die")
    if signals == NO_SIGKILL:
        assert ("kill", "9") not in sent
    elif signals:
        assert sent == signals
    if "--stop-timeout" in options:
        assert doc["Config"]["StopTimeout"] == 2


# ---- C09: a hung health check is killed at its timeout -------------------------


def create_started(d: Daemon, name: str, body: dict) -> str:
    container_id = d.api("POST", "/containers/create", body, name=name)["Id"]
    d.api("POST", f"/containers/{container_id}/start")
    return container_id


def test_c09_a_hung_probe_is_killed_at_its_timeout_and_counts_as_a_failure(
    daemon, case
):
    check = {"Interval": 1_000_000_000, "Timeout": 1_000_000_000, "Retries": 2}
    t0 = time.time_ns()
    started = time.monotonic()
    c09 = create_started(
        daemon,
        case,
        {
            "Image": "busybox:test",
            "Cmd": ["sleep", "300"],
            "Healthcheck": {"Test": ["CMD", "sleep", "30"], **check},
        },
    )
    create_started(
        daemon,
        case + "ok",
        {
            "Image": "busybox:test",
            "Cmd": ["sleep", "300"],
            "Healthcheck": {"Test": ["CMD", "true"], **check},
        },
    )

    wait_until(
        lambda: state(daemon, case + "ok")["Health"]["Status"] == "healthy",
        3 * SLOW,
        message="c09ok healthy",
    )
    wait_until(
        lambda: state(daemon, case)["Health"]["Status"] == "unhealthy",
        8 * SLOW - (time.monotonic() - started),
        message="c09 unhealthy",
    )
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))

    health = state(daemon, case)["Health"]
    hung = [p for p in processes(daemon, case) if p[2] == "sleep 30"]
    events = daemon.events(t0, container=[c09])
    assert health["Status"] == "unhealthy"
    assert health["FailingStreak"] >= 2
    assert health["Log"]
    for entry in health["Log"]:
        assert entry["ExitCode"] == -1, entry
        assert "timeout" in entry["Output"].lower(), entry
        assert seconds_between(entry["Start"], entry["End"]) <= 1.5, entry
    assert len(hung) <= 1, hung
    assert health_events(events) == ["health_status: unhealthy"]


# ---- C18: event order and state of fast, stopped and failed containers --------


def test_c18_events_are_ordered_and_state_is_consistent(daemon, case):
    stream = daemon.cli_popen(
        "events", "--since", str(time.time()), "--format", "{{json .}}"
    )
    # Read as it comes, so the pipe never fills and holds the stream up.
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        output = reader.submit(stream.stdout.read)
        try:
            for i in range(1, 31):
                daemon.cli(
                    "run", "--name", f"{case}-{i}", "busybox:test", "true", check=True
                )
                shown = daemon.cli(
                    "inspect",
                    "-f",
                    "{{.State.Status}} {{.State.Pid}}",
                    f"{case}-{i}",
                    check=True,
                ).stdout
                assert shown == "exited 0\n", i
            daemon.run_detached("--name", case + "s", "busybox:test", "sleep", "300")
            daemon.cli("stop", "-t", "1", case + "s", check=True)
            failed = daemon.cli(
                "run", "--name", case + "x", "busybox:test", "/does-not-exist"
            )
            time.sleep(1)
        finally:
            stream.terminate()
        events = [json.loads(line) for line in output.result(5).splitlines()]

    def of(ref: str) -> list[dict]:
        return [e for e in events if e["Actor"]["Attributes"].get("name") == ref]

    for i in range(1, 31):
        assert actions(of(f"{case}-{i}")) == [
            ("create", ""),
            ("start", ""),
            ("die", "0"),
        ], i
    assert actions(of(case + "s"), "kill", "die", "stop") == [
        ("kill", "15"),
        ("kill", "9"),
        ("die", "137"),
        ("stop", ""),
    ]
    assert failed.returncode == 127
    assert actions(of(case + "x"), "start", "die") == []
    doc = state(daemon, case + "x")
    assert "/does-not-exist" in doc["Error"]
    assert (doc["ExitCode"], doc["Running"]) == (127, False)
    stamps = [e["timeNano"] for e in events]
    assert stamps == sorted(stamps)


# ---- health checks ---------------------------------------------------------------


def health(d: Daemon, ref: str) -> dict:
    return state(d, ref)["Health"]


def health_events(events: list[dict]) -> list[str]:
    return [e["Action"] for e in events if e["Action"].startswith("health_status")]


def test_a_passing_health_check_makes_the_container_healthy(daemon, case):
    t0 = time.time_ns()
    container_id = daemon.run_detached(
        "--name",
        case,
        "--health-cmd",
        "echo fine",
        "--health-interval",
        "200ms",
        "busybox:test",
        "sleep",
        "300",
    )

    wait_until(
        lambda: health(daemon, case)["Status"] == "healthy", 5 * SLOW, message="healthy"
    )

    shown = health(daemon, case)
    assert shown["FailingStreak"] == 0
    assert [(e["ExitCode"], e["Output"]) for e in shown["Log"]][:1] == [(0, "fine\n")]
    events = daemon.events(t0, container=[container_id])
    assert health_events(events) == ["health_status: healthy"]


def test_a_failing_health_check_makes_it_unhealthy_after_retries_and_it_keeps_running(
    daemon, case
):
    t0 = time.time_ns()
    container_id = daemon.run_detached(
        "--name",
        case,
        "--health-cmd",
        "echo sick; exit 1",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        "busybox:test",
        "sleep",
        "300",
    )

    wait_until(
        lambda: health(daemon, case)["Status"] == "unhealthy",
        5 * SLOW,
        message="unhealthy",
    )

    shown = health(daemon, case)
    assert shown["FailingStreak"] >= 2
    assert {(e["ExitCode"], e["Output"]) for e in shown["Log"]} == {(1, "sick\n")}
    assert state(daemon, case)["Running"] is True
    events = daemon.events(t0, container=[container_id])
    assert health_events(events) == ["health_status: unhealthy"]


def test_a_hung_shell_probe_is_killed_with_its_children_at_the_timeout(daemon, case):
    # The shell form: sh -c runs sleep as its child, which must die too.
    daemon.run_detached(
        "--name",
        case,
        "--health-cmd",
        "sleep 30; true",
        "--health-interval",
        "100ms",
        "--health-timeout",
        "500ms",
        "--health-retries",
        "2",
        "busybox:test",
        "sleep",
        "300",
    )

    wait_until(
        lambda: len(health(daemon, case)["Log"]) >= 4,
        10 * SLOW,
        message="4 probes done",
    )

    shown = health(daemon, case)
    assert shown["Status"] == "unhealthy"
    assert {e["ExitCode"] for e in shown["Log"]} == {-1}
    assert all("timeout" in e["Output"].lower() for e in shown["Log"])
    left = [args for _, _, args in processes(daemon, case) if "sleep 30" in args]
    assert len([a for a in left if a == "sleep 30"]) <= 1, left


def test_health_on_failure_stop_stops_it_for_good_with_its_stop_signal_and_timeout(
    daemon, case
):
    t0 = time.time_ns()
    container_id = daemon.run_detached(
        "--name", case, "--restart", "always", "--stop-timeout", "1",
        "--health-on-failure", "stop", "--health-cmd", "exit 1",
        "--health-interval", "200ms", "--health-retries", "1",
        "busybox:test", "sleep", "300",
    )

    wait_until(lambda: not state(daemon, case)["Running"], 5 * SLOW, message="stopped")

    holds_for(
        lambda: status_and_restarting(daemon, case) == ("exited", False), 2,
        message="a stop by the health action is not restarted",
    )
    assert restart_count(daemon, case) == 0
    assert state(daemon, case)["ExitCode"] == 137
    events = actions(
        daemon.events(t0, container=[container_id]),
        "health_status: unhealthy", "kill", "die", "stop",
    )
    assert events == [
        ("health_status: unhealthy", ""), ("kill", "15"), ("kill", "9"),
        ("die", "137"), ("stop", ""),
    ]


def test_health_on_failure_kill_kills_it_and_the_restart_policy_decides(daemon, case):
    t0 = time.time_ns()
    container_id = daemon.run_detached(
        "--name", case, "--health-on-failure", "kill", "--health-cmd", "exit 1",
        "--health-interval", "200ms", "--health-retries", "1",
        "busybox:test", "sleep", "300",
    )

    wait_until(lambda: not state(daemon, case)["Running"], 5 * SLOW, message="killed")

    assert (state(daemon, case)["ExitCode"], restart_count(daemon, case)) == (137, 0)
    events = actions(daemon.events(t0, container=[container_id]), "kill", "die")
    assert events == [("kill", "9"), ("die", "137")]


@pytest.fixture
def healthcheck_image(daemon, tmp_path):
    """An image whose HEALTHCHECK prints from-image every 200 ms."""
    tag = f"health-{os.urandom(3).hex()}:1"
    check = {"Test": ["CMD-SHELL", "echo from-image"], "Interval": 200_000_000}
    image = busybox_image([tag], config={"Healthcheck": check})
    write_docker_archive(tmp_path / "health.tar", [image])
    daemon.cli("load", "-i", str(tmp_path / "health.tar"), check=True)
    yield tag
    daemon.api("DELETE", f"/images/{tag}")


def test_the_images_healthcheck_runs_and_options_adjust_it_field_by_field(
    daemon, healthcheck_image, case
):
    daemon.run_detached("--name", case, healthcheck_image, "sleep", "300")
    daemon.run_detached(
        "--name", f"{case}-tuned", "--health-retries", "1",
        "--health-timeout", "2s", healthcheck_image, "sleep", "300",
    )

    for ref in (case, f"{case}-tuned"):
        wait_until(
            lambda ref=ref: health(daemon, ref)["Status"] == "healthy", 5 * SLOW,
            message=f"{ref} healthy through the image's check",
        )
        assert health(daemon, ref)["Log"][0]["Output"] == "from-image\n"
    tuned = daemon.inspect(f"{case}-tuned")["Config"]["Healthcheck"]
    assert tuned == {
        "Test": ["CMD-SHELL", "echo from-image"], "Interval": 200_000_000,
        "Retries": 1, "Timeout": 2_000_000_000,
    }


def test_no_healthcheck_disables_the_images_check(daemon, healthcheck_image, case):
    daemon.run_detached("--name", case, "--no-healthcheck", healthcheck_image,
                        "sleep", "300")

    holds_for(
        lambda: "Health" not in state(daemon, case), 1, message="no health state"
    )
    assert daemon.inspect(case)["Config"]["Healthcheck"]["Test"] == ["NONE"]


def test_health_on_failure_restart_restarts_through_the_backoff_and_counts_it(
    daemon, case
):
    t0 = time.time_ns()
    container_id = daemon.run_detached(
        "--name",
        case,
        "--health-on-failure",
        "restart",
        "--health-cmd",
        "exit 1",
        "--health-interval",
        "200ms",
        "--health-retries",
        "1",
        "busybox:test",
        "sleep",
        "300",
    )

    wait_until(
        lambda: restart_count(daemon, case) >= 1,
        5 * SLOW,
        message="a restart after the failed check",
    )
    wait_until(lambda: state(daemon, case)["Running"], 5 * SLOW, message="running")

    events = actions(
        daemon.events(t0, container=[container_id]),
        "start",
        "health_status: unhealthy",
        "die",
        "restart_scheduled",
    )
    assert events[:5] == [
        ("start", ""),
        ("health_status: unhealthy", ""),
        ("die", "137"),
        ("restart_scheduled", ""),
        ("start", ""),
    ]


# ---- backoff, manual stops and the start limit ----------------------------------


@pytest.mark.parametrize(
    "command, expected_events",
    [(["stop"], [("stop", "")]), (["kill", "-s", "USR1"], [("kill", "10")])],
    ids=["stop", "kill"],
)
def test_a_manual_stop_during_the_backoff_of_an_always_container_keeps_it_exited(
    daemon, case, command, expected_events
):
    container_id = daemon.run_detached(
        "--name",
        case,
        "--restart",
        "always",
        "--restart-delay",
        "2s",
        "busybox:test",
        "sh",
        "-c",
        "exit 1",
    )
    wait_until(
        lambda: state(daemon, case)["Restarting"], 5 * SLOW, message="in the backoff"
    )
    waiting = state(daemon, case)["CorralRestart"]
    assert waiting["BackoffDelaySeconds"] == 2.0
    assert waiting["NextRestartAt"] != "0001-01-01T00:00:00Z"
    scheduled = daemon.events(0, container=[container_id], event=["restart_scheduled"])
    assert [e["Actor"]["Attributes"]["delay"] for e in scheduled] == ["2.000s"]
    follower = daemon.cli_popen("logs", "-f", case)
    t0 = time.time_ns()

    daemon.cli(*command, case, check=True)

    def stopped() -> bool:
        shown = (*status_and_restarting(daemon, case), restart_count(daemon, case))
        return shown == ("exited", False, 0)

    holds_for(stopped, 3, message="exited, not restarting, never restarted")
    shown = state(daemon, case)["CorralRestart"]
    assert shown["ManuallyStopped"] is True
    assert shown["NextRestartAt"] == "0001-01-01T00:00:00Z"
    assert actions(daemon.events(t0, container=[container_id])) == expected_events
    # The restart it waited for will not come: logs -f ends.
    assert follower.wait(timeout=2 * SLOW) == 0


@pytest.mark.parametrize("how", ["SIGTERM", "kill -9"])
@pytest.mark.parametrize(
    "policy, code", [("always", 1), ("on-failure:100", 2)], ids=["always", "on-failure"]
)
def test_a_crash_loop_resumes_after_a_daemon_restart_with_its_count_intact(
    fresh_daemon, how, policy, code
):
    d = fresh_daemon
    d.run_detached(
        "--name", "loop", "--restart", policy, "--restart-delay", "300ms",
        "--restart-max-delay", "300ms", "busybox:test", "sh", "-c",
        f"sleep 0.2; exit {code}",
    )
    wait_until(lambda: restart_count(d, "loop") >= 3, 10 * SLOW, message="looping")

    if how == "SIGTERM":
        d.restart()
    else:
        d.crash()
        d.start()
    resumed_at = restart_count(d, "loop")

    assert resumed_at >= 3
    wait_until(
        lambda: restart_count(d, "loop") >= resumed_at + 3,
        10 * SLOW,
        message="the loop goes on, counting from where it was",
    )
    doc = d.inspect("loop")
    assert doc["State"]["ExitCode"] in (0, code)
    assert doc["State"]["CorralRestart"]["ManuallyStopped"] is False


def test_an_always_container_stopped_by_hand_comes_back_and_restarts_again(
    fresh_daemon,
):
    d = fresh_daemon
    d.run_detached(
        "--name", "back", "--restart", "always", "--restart-delay", "100ms",
        "busybox:test", "sh", "-c", "sleep 1; exit 1",
    )
    d.cli("stop", "-t", "1", "back", check=True)
    assert state(d, "back")["CorralRestart"]["ManuallyStopped"] is True

    d.restart()

    wait_until(lambda: state(d, "back")["Running"], 3 * SLOW, message="started again")
    # Its next crash is restarted by policy, not taken for a manual stop.
    wait_until(
        lambda: restart_count(d, "back") >= 1 and state(d, "back")["Running"],
        6 * SLOW,
        message="restarted after the crash that followed the daemon restart",
    )


def test_every_backoff_flag_lands_in_its_hostconfig_field(daemon, case):
    daemon.cli(
        "create", "--name", case, "--restart", "always",
        "--restart-delay", "500ms", "--restart-factor", "3",
        "--restart-max-delay", "5m", "--restart-reset-after", "1m",
        "--restart-jitter", "0.2", "--start-limit", "5/30s",
        "busybox:test", "true", check=True,
    )

    host = daemon.inspect(case)["HostConfig"]
    assert host["CorralRestartBackoff"] == {
        "InitialDelay": 500_000_000, "Factor": 3, "MaxDelay": 300_000_000_000,
        "ResetAfter": 60_000_000_000, "Jitter": 0.2,
    }
    assert host["CorralStartLimit"] == {"Burst": 5, "Interval": 30_000_000_000}


def test_logs_follow_goes_on_across_automatic_restarts_until_the_last_exit(
    daemon, case
):
    daemon.run_detached(
        "--name", case, "--restart", "on-failure:2", "--restart-delay", "300ms",
        "busybox:test", "sh", "-c", COUNTER_SH + 'echo "run $n"; exit 1',
    )
    follower = daemon.cli_popen("logs", "-f", case)

    out, _ = follower.communicate(timeout=10 * SLOW)

    assert out.splitlines() == ["run 1", "run 2", "run 3"]
    assert follower.returncode == 0
    assert restart_count(daemon, case) == 2


def test_stop_kills_a_pid_1_that_ignores_sigterm_after_the_timeout_within_10_percent(
    daemon, case
):
    container_id = daemon.run_detached(
        "--name", case, "busybox:test", "sh", "-c", "while :; do sleep 1; done"
    )
    t0 = time.time_ns()

    daemon.cli("stop", "-t", "2", case, check=True)

    events = daemon.events(t0, container=[container_id])
    term = [e for e in events if e["Action"] == "kill"][0]
    assert term["Actor"]["Attributes"]["signal"] == "15"
    sigkill_after_s = times_of(events, "kill")[1] - term["timeNano"] / 1e9
    die_after_s = times_of(events, "die")[0] - term["timeNano"] / 1e9
    assert 2.0 <= sigkill_after_s <= 2.2
    assert 2.0 <= die_after_s <= 2.2
    assert state(daemon, case)["ExitCode"] == 137


def test_a_start_limit_gives_up_with_a_reason_and_a_restart_gave_up_event(daemon, case):
    t0 = time.time_ns()
    container_id = daemon.run_detached(
        "--name",
        case,
        "--restart",
        "always",
        "--restart-delay",
        "10ms",
        "--start-limit",
        "3/60s",
        "busybox:test",
        "sh",
        "-c",
        "exit 1",
    )

    wait_until(
        lambda: state(daemon, case)["CorralRestart"]["GaveUpReason"],
        5 * SLOW,
        message="the policy gave up",
    )

    doc = daemon.inspect(case)
    reason = doc["State"]["CorralRestart"]["GaveUpReason"]
    assert reason == "start limit hit: 3 restarts within 60 s"
    assert doc["State"]["CorralRestart"]["GaveUpAt"] != "0001-01-01T00:00:00Z"
    assert (
        doc["State"]["Status"],
        doc["State"]["Restarting"],
        doc["RestartCount"],
    ) == (
        "exited",
        False,
        3,
    )
    events = daemon.events(t0, container=[container_id])
    assert len(times_of(events, "start")) == 4
    gave_up = [e for e in events if e["Action"] == "restart_gave_up"]
    assert [e["Actor"]["Attributes"]["reason"] for e in gave_up] == [reason]


def test_wait_next_exit_returns_each_runs_code_across_automatic_restarts(daemon, case):
    # Run n exits 10+n: on-failure:2 gives runs 1, 2 and 3.
    script = COUNTER_SH + "sleep 0.5; exit $((10+n))"
    daemon.run_detached(
        "--name", case, "--restart", "on-failure:2", "busybox:test", "sh", "-c", script
    )

    def next_exit() -> int:
        response = daemon.client.open(
            "POST", f"/containers/{case}/wait", {"condition": "next-exit"}
        )
        return json.loads(response.read())["StatusCode"]

    assert next_exit() == 11
    # Issued in the backoff (or in run 2), it waits for run 2's exit.
    assert next_exit() == 12
    wait_until(
        lambda: (
            status_and_restarting(daemon, case) == ("exited", False)
            and restart_count(daemon, case) == 2
        ),
        5 * SLOW,
        message="retries used",
    )
    assert daemon.cli("wait", case, check=True).stdout == "13\n"


# ---- exec ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def box(daemon):
    """A running container for exec tests, with A=1 and B=1 in its env."""
    name = unique_name("exec-box")
    daemon.run_detached(
        "--name", name, "-e", "A=1", "-e", "B=1", "busybox:test", "sleep", "300"
    )
    yield name
    daemon.cli("rm", "-f", name)


def test_exec_exits_with_the_commands_code_and_emits_exec_events(daemon, box):
    t0 = time.time_ns()

    result = daemon.cli("exec", box, "sh", "-c", "echo out; exit 3")

    assert (result.returncode, result.stdout) == (3, "out\n")
    events = daemon.events(t0, container=[box])
    assert actions(events) == [
        ("exec_create: sh -c echo out; exit 3", ""),
        ("exec_start: sh -c echo out; exit 3", ""),
        ("exec_die", "3"),
    ]


def test_exec_inspect_shows_the_exit_code_once_it_ends(daemon, box):
    exec_id = daemon.api(
        "POST", f"/containers/{box}/exec", {"Cmd": ["sh", "-c", "exit 4"]}
    )["Id"]

    daemon.client.open("POST", f"/exec/{exec_id}/start", body={"Detach": False}).read()

    shown = daemon.api("GET", f"/exec/{exec_id}/json")
    assert (shown["Running"], shown["ExitCode"]) == (False, 4)


def test_exec_env_adds_to_the_containers_env_and_overrides_it(daemon, box):
    result = daemon.cli("exec", "-e", "B=2", "-e", "C=3", box, "env", check=True)

    env = set(result.stdout.splitlines())
    assert {"A=1", "B=2", "C=3"} <= env
    assert "B=1" not in env


@pytest.mark.parametrize(
    ("user", "ids"), [("nobody", "65534 65534"), ("0:65534", "0 65534")]
)
def test_exec_u_runs_the_command_as_that_user(daemon, box, user, ids):
    result = daemon.cli(
        "exec", "-u", user, box, "sh", "-c", 'echo "$(id -u) $(id -g)"', check=True
    )

    assert result.stdout == ids + "\n"


def test_exec_w_runs_the_command_in_that_directory(daemon, box):
    assert daemon.cli("exec", "-w", "/tmp", box, "pwd", check=True).stdout == "/tmp\n"


def test_exec_of_a_missing_command_exits_127_and_names_it(daemon, box):
    result = daemon.cli("exec", box, "/no/such/command")

    assert result.returncode == 127
    assert "/no/such/command" in result.stderr


def test_exec_into_a_stopped_container_is_a_409_that_says_it_is_not_running(
    daemon, case
):
    container_id = daemon.cli(
        "create", "--name", case, "busybox:test", "true", check=True
    ).stdout.strip()

    reply = daemon.request(
        "POST",
        f"/containers/{case}/exec",
        json.dumps({"Cmd": ["true"]}).encode(),
        {"Content-Type": "application/json"},
    )
    result = daemon.cli("exec", case, "true")

    assert reply.status == 409
    assert reply.json()["message"] == f"Container {container_id} is not running"
    assert result.returncode != 0
    assert "is not running" in result.stderr


# ---- --init ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "zombies"),
    [(["--init"], 0), ([], 1)],
    ids=["init-reaps", "plain-pid-1-does-not"],
)
def test_init_reaps_orphaned_zombies_that_a_plain_pid_1_leaves(
    daemon, case, options, zombies
):
    # The subshell's sleep is orphaned at once; when it exits, only an
    # init that reaps removes it from the process table.
    daemon.run_detached(
        "--name",
        case,
        *options,
        "busybox:test",
        "sh",
        "-c",
        "(sleep 0.2 &); exec sleep 300",
    )
    wait_until(
        lambda: not runs(daemon, case, "sleep 0.2"),
        5 * SLOW,
        message="the orphan to exit",
    )

    def zombie_count() -> int:
        return sum(stat.startswith("Z") for _, stat, _ in processes(daemon, case))

    wait_until(
        lambda: zombie_count() == zombies, 2 * SLOW, message=f"{zombies} zombie(s)"
    )
    holds_for(lambda: zombie_count() == zombies, 0.5, message=f"{zombies} zombie(s)")


def test_init_forwards_term_to_the_command_which_exits_143(daemon, case):
    daemon.run_detached("--name", case, "--init", "busybox:test", "sleep", "300")
    wait_until(
        lambda: runs(daemon, case, "sleep 300"),
        5 * SLOW,
        message="sleep under the init",
    )

    daemon.cli("kill", "-s", "TERM", case, check=True)

    assert daemon.cli("wait", case, check=True, timeout=5 * SLOW).stdout == "143\n"
    assert status_and_restarting(daemon, case) == ("exited", False)


# ---- events ----------------------------------------------------------------------


def test_events_since_and_until_replay_a_window_filtered_by_container_event_and_label(
    daemon, case
):
    t0 = time.time_ns()
    first = daemon.cli(
        "run",
        "-d",
        "--name",
        case + "-1",
        "-l",
        "team=blue",
        "busybox:test",
        "true",
        check=True,
    ).stdout.strip()
    daemon.cli("wait", first, check=True)
    daemon.cli("run", "--name", case + "-2", "busybox:test", "sh", "-c", "exit 2")
    t1 = time.time_ns()
    time.sleep(0.1)
    daemon.cli("run", "--name", case + "-3", "busybox:test", "true")

    assert actions(daemon.events(t0, t1, container=[first])) == [
        ("create", ""),
        ("start", ""),
        ("die", "0"),
    ]
    assert actions(
        daemon.events(t0, t1, container=[case + "-1", case + "-2"], event=["die"])
    ) == [("die", "0"), ("die", "2")]
    assert {
        e["Actor"]["Attributes"]["name"]
        for e in daemon.events(t0, t1, label=["team=blue"])
    } == {case + "-1"}
    assert daemon.events(t0, t1, type=["image"]) == []
    assert daemon.events(t0 - 10**9, t0, container=[first]) == []
    assert [
        e["Actor"]["Attributes"]["name"]
        for e in daemon.events(t1, container=[case + "-3"], event=["create"])
    ] == [case + "-3"]


def test_events_cli_streams_live_events_until_the_until_time_then_ends(daemon, case):
    now = time.time()
    stream = daemon.cli_popen(
        "events",
        "--since",
        f"{now:.3f}",
        "--until",
        f"{now + 3:.3f}",
        "--filter",
        f"container={case}",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    )
    daemon.cli("run", "--name", case, "busybox:test", "true", check=True)

    out, err = stream.communicate(timeout=10 * SLOW)

    assert time.time() >= now + 3
    assert (stream.returncode, err) == (0, "")
    assert out == f"create {case}\nstart {case}\ndie {case}\n"


def test_events_cli_json_format_prints_valid_json_for_any_action(daemon, box):
    t0 = time.time()
    daemon.cli("exec", box, "sh", "-c", 'echo "quoted \\ text"', check=True)

    result = daemon.cli(
        "events",
        "--since",
        f"{t0:.3f}",
        "--until",
        f"{time.time():.3f}",
        "--filter",
        f"container={box}",
        "--format",
        "{{json .}}",
        check=True,
    )

    shown = [json.loads(line)["Action"] for line in result.stdout.splitlines()]
    assert shown[0] == 'exec_create: sh -c echo "quoted \\ text"'


def test_events_cli_takes_durations_as_times_that_long_ago(daemon, case):
    daemon.cli("create", "--name", case, "busybox:test", "true", check=True)

    result = daemon.cli("events", "--since", "1m", "--until", "0s", "--filter",
                        f"container={case}", "--format", "{{.Action}}", check=True)

    assert result.stdout.splitlines() == ["create"]


def test_events_with_an_unknown_filter_are_refused_with_a_400(daemon):
    query = urlencode({"since": 1, "until": 2, "filters": json.dumps({"bogus": ["x"]})})

    reply = daemon.request("GET", f"/events?{query}")

    assert reply.status == 400
    assert "bogus" in reply.json()["message"]
