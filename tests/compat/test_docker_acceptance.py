"""Acceptance cases C01, C04, C05, C07 and C09, and exec, driven by the real
docker client pointed at corrald, as the cases ask: the same steps a docker
user takes, with the cases' assertions. The parts that restart the daemon
are covered through corral's own CLI in tests/integration."""

import itertools
import json
import os
import time

import pytest
from daemon import wait_until
from dockercli import needs_docker, ok

pytestmark = needs_docker

SLOW = float(os.environ.get("SLOW", "1"))
COUNTER_SH = "n=$(cat /n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /n; "
LOOP_SH = "while :; do sleep 1; done"


def inspect(docker, ref: str, template: str) -> str:
    return ok(docker("inspect", "-f", template, ref)).stdout.strip()


def events_of(daemon, ref: str, since_ns: int) -> list[dict]:
    return daemon.events(since_ns, container=[ref])


def actions(events: list[dict], *wanted: str) -> list[tuple[str, str]]:
    found = []
    for event in events:
        if not wanted or event["Action"] in wanted:
            attrs = event["Actor"]["Attributes"]
            found.append(
                (event["Action"], attrs.get("signal", attrs.get("exitCode", "")))
            )
    return found


def test_c01_docker_on_failure_3_restarts_exactly_3_times(docker, daemon, case):
    t0 = time.time_ns()
    ok(docker("run", "-d", "--name", case, "--restart", "on-failure:3",
              "busybox:test", "sh", "-c", "echo attempt; exit 3"))
    ok(docker("run", "-d", "--name", f"{case}ok", "--restart", "on-failure:3",
              "busybox:test", "sh", "-c", "exit 0"))

    wait_until(
        lambda: inspect(docker, case, "{{.State.Status}} {{.State.Restarting}}")
        == "exited false" and inspect(docker, case, "{{.RestartCount}}") == "3",
        10 * SLOW, message="on-failure:3 exhausted",
    )

    assert inspect(docker, case, "{{.RestartCount}} {{.State.ExitCode}}") == "3 3"
    assert ok(docker("logs", case)).stdout.splitlines() == ["attempt"] * 4
    assert actions(events_of(daemon, case, t0), "start", "die") == [
        ("start", ""), ("die", "3")
    ] * 4
    assert inspect(docker, f"{case}ok", "{{.RestartCount}} {{.State.ExitCode}}") == "0 0"
    policy = json.loads(inspect(docker, case, "{{json .HostConfig.RestartPolicy}}"))
    assert policy == {"Name": "on-failure", "MaximumRetryCount": 3}


def test_c04_docker_sees_the_backoff_double_and_reset(docker, daemon, case):
    script = COUNTER_SH + (
        'echo "run $n"\n[ $n -eq 5 ] && sleep 11\n[ $n -ge 7 ] && exec sleep 600\n'
        "exit 1"
    )
    t0 = time.time_ns()
    ok(docker("run", "-d", "--name", case, "--restart", "always",
              "busybox:test", "sh", "-c", script))

    wait_until(
        lambda: inspect(docker, case, "{{.RestartCount}}") == "6", 30 * SLOW,
        message="6 restarts",
    )
    time.sleep(0.5)

    events = events_of(daemon, case, t0)
    starts = [e["timeNano"] / 1e9 for e in events if e["Action"] == "start"]
    dies = [e["timeNano"] / 1e9 for e in events if e["Action"] == "die"]
    gaps = [start - die for start, die in zip(starts[1:], dies)]
    assert len(gaps) == 6, gaps
    assert gaps[0] <= 0.5, gaps
    for earlier, later in itertools.pairwise(gaps[:4]):
        assert later >= 1.5 * earlier - 0.05, gaps
    assert gaps[4] <= 0.5, f"run 5 lasted 11 s, so the delay resets: {gaps}"
    assert inspect(docker, case, "{{.State.Running}}") == "true"


def test_c05_docker_kill_s_usr1_is_not_a_stop_but_a_plain_kill_is(
    docker, daemon, case
):
    ok(docker("run", "-d", "--name", case, "--restart", "unless-stopped",
              "busybox:test", "sh", "-c",
              'rm -f /tmp/die; trap "echo got-usr1" USR1; '
              "while [ ! -f /tmp/die ]; do sleep 0.2; done; exit 7"))
    time.sleep(0.5)

    ok(docker("kill", "-s", "USR1", case))
    wait_until(lambda: "got-usr1" in ok(docker("logs", case)).stdout, 3 * SLOW,
               message="the trap ran")
    assert inspect(docker, case, "{{.State.Running}}") == "true"

    ok(docker("exec", case, "touch", "/tmp/die"))
    wait_until(
        lambda: inspect(docker, case, "{{.RestartCount}} {{.State.Running}}")
        == "1 true", 5 * SLOW, message="the crash was restarted",
    )

    ok(docker("kill", case))
    wait_until(lambda: inspect(docker, case, "{{.State.Running}}") == "false",
               3 * SLOW, message="killed")
    time.sleep(2)
    assert inspect(
        docker, case, "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}"
    ) == "exited 137 1"


@pytest.mark.parametrize(
    "flags, command, stop, low_s, high_s, code",
    [
        pytest.param([], ["sh", "-c", LOOP_SH], ["stop", "-t", "3"], 3.0, 4.5, 137,
                     id="c07a-ignores-term"),
        pytest.param([], ["sh", "-c", 'trap "exit 143" TERM; while :; do sleep 0.1; done'],
                     ["stop", "-t", "10"], 0, 1.5, 143, id="c07b-traps-term"),
        pytest.param(["--init"], ["sleep", "300"], ["stop", "-t", "10"], 0, 1.5, 143,
                     id="c07c-init"),
        pytest.param(["--stop-timeout", "2"], ["sh", "-c", LOOP_SH], ["stop"], 2.0, 3.5,
                     137, id="c07d-stop-timeout"),
        pytest.param([], ["sleep", "300"], ["kill"], 0, 1.0, 137, id="c07e-kill"),
    ],
)
def test_c07_docker_stop_and_kill_take_the_expected_time_and_code(
    docker, case, flags, command, stop, low_s, high_s, code
):
    ok(docker("run", "-d", "--name", case, *flags, "busybox:test", *command))
    time.sleep(0.3)

    started = time.monotonic()
    ok(docker(*stop, case))
    took_s = time.monotonic() - started
    docker_wait = ok(docker("wait", case)).stdout.strip()

    assert low_s <= took_s <= high_s * SLOW, took_s
    assert inspect(docker, case, "{{.State.ExitCode}} {{.State.OOMKilled}}") == (
        f"{code} false"
    )
    assert docker_wait == str(code)


def test_c09_docker_inspect_shows_a_hung_probe_killed_at_its_timeout(
    docker, daemon, case
):
    body = {
        "Image": "busybox:test", "Cmd": ["sleep", "300"],
        "Healthcheck": {"Test": ["CMD", "sleep", "30"], "Interval": 1_000_000_000,
                        "Timeout": 1_000_000_000, "Retries": 2},
    }
    daemon.api("POST", "/containers/create", body, name=case)
    daemon.api("POST", f"/containers/{case}/start")

    wait_until(
        lambda: inspect(docker, case, "{{.State.Health.Status}}") == "unhealthy",
        8 * SLOW, message="unhealthy",
    )

    shown = json.loads(inspect(docker, case, "{{json .State.Health}}"))
    assert shown["FailingStreak"] >= 2
    assert all(entry["ExitCode"] == -1 for entry in shown["Log"])
    assert all("timeout" in entry["Output"] for entry in shown["Log"])
    ps = ok(docker("exec", case, "ps", "-o", "args")).stdout.splitlines()
    assert ps.count("sleep 30") <= 1


def test_docker_exec_passes_env_user_and_workdir_and_the_exit_code(docker, case):
    ok(docker("run", "-d", "--name", case, "busybox:test", "sleep", "300"))

    shown = ok(docker("exec", "-e", "GREETING=hi", "-u", "nobody", "-w", "/tmp", case,
                      "sh", "-c", 'echo "$GREETING $(id -un) $(pwd)"'))
    failed = docker("exec", case, "sh", "-c", "echo oops >&2; exit 3")
    missing = docker("exec", case, "no-such-command")
    detached = docker("exec", "-d", case, "touch", "/tmp/detached")

    assert shown.stdout == "hi nobody /tmp\n"
    assert (failed.returncode, failed.stderr) == (3, "oops\n")
    assert missing.returncode == 127
    assert detached.returncode == 0
    wait_until(lambda: docker("exec", case, "test", "-f", "/tmp/detached").returncode
               == 0, 3 * SLOW, message="the detached exec ran")


HOG = "dd if=/dev/zero of=/dev/null bs=256M count=1"
OOM_FLAGS = ("-m", "32m", "--memory-swap", "32m")


def test_c06_docker_sees_every_oom_kill_and_oomkilled_reset_on_start(
    docker, daemon, case
):
    for i in range(1, 6):
        t0 = time.time_ns()
        ref = f"{case}-{i}"
        run = docker("run", "--name", ref, *OOM_FLAGS, "busybox:test", "sh", "-c",
                     f"exec {HOG}")
        assert run.returncode == 137, (i, run.stderr)
        assert inspect(docker, ref, "{{.State.ExitCode}} {{.State.OOMKilled}} "
                       "{{.State.Status}}") == "137 true exited"
        assert [a for a, _ in actions(events_of(daemon, ref, t0), "oom", "die")] == [
            "oom", "die"]

    again = f"{case}-r"
    first = docker("run", "--name", again, *OOM_FLAGS, "busybox:test", "sh", "-c",
                   f"[ -f /ran ] && exit 0; touch /ran; exec {HOG}")
    assert first.returncode == 137
    ok(docker("start", "-a", again))
    assert inspect(docker, again, "{{.State.ExitCode}} {{.State.OOMKilled}}") == (
        "0 false")

    child = f"{case}-child"
    run = docker("run", "--name", child, *OOM_FLAGS, "busybox:test", "sh", "-c",
                 f"{HOG}; echo dd_rc=$?; exit 0")
    assert run.returncode == 0
    assert inspect(docker, child, "{{.State.ExitCode}} {{.State.OOMKilled}}") == (
        "0 true")
    assert "dd_rc=137" in ok(docker("logs", child)).stdout


def test_c11_docker_top_shows_a_contained_fork_bomb(docker, case):
    ok(docker("run", "-d", "--name", case, "--pids-limit", "20", "busybox:test",
              "sh", "-c",
              'sh -c "while :; do sleep 300 & done"; echo bomb-done; exec sleep 300'))
    time.sleep(3)

    rows = ok(docker("top", case)).stdout.splitlines()[1:]

    assert 1 <= len(rows) <= 20
    assert inspect(docker, case, "{{.HostConfig.PidsLimit}}") == "20"
    logs = docker("logs", case)
    assert "bomb-done" in logs.stdout + logs.stderr
    started = time.monotonic()
    ok(docker("stop", "-t", "1", case))
    assert time.monotonic() - started < 5
