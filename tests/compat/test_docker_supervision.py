"""Acceptance cases C03 and C18 driven by the real docker client pointed at
corrald: restart-policy validation and the event stream, as docker users
see them."""

import concurrent.futures
import json
import subprocess
import time

import pytest
from dockercli import DOCKER, needs_docker, ok

pytestmark = needs_docker


def container_count(docker) -> int:
    return len(ok(docker("ps", "-aq")).stdout.split())


# ---- C03 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "words"),
    [
        pytest.param(
            "always:3", ["maximum retry count", "on-failure"], id="A-count-with-always"
        ),
        pytest.param("on-failure:-1", ["cannot be negative"], id="B-negative-count"),
        pytest.param(
            "bogus",
            ["bogus", "no", "always", "on-failure", "unless-stopped"],
            id="C-unknown-name",
        ),
    ],
)
def test_c03_docker_run_with_an_invalid_restart_policy_shows_the_daemons_400(
    docker, restart, words
):
    before = container_count(docker)

    result = docker("run", "-d", "--restart", restart, "busybox:test", "true")

    assert result.returncode == 125
    assert "Error response from daemon" in result.stderr
    for word in words:
        assert word in result.stderr
    assert container_count(docker) == before


def test_c03_docker_run_rm_with_restart_exits_125_naming_both_flags(docker):
    before = container_count(docker)

    result = docker("run", "--rm", "--restart", "always", "busybox:test", "true")

    assert result.returncode == 125
    assert "--rm" in result.stderr and "--restart" in result.stderr
    assert container_count(docker) == before


@pytest.mark.parametrize(
    ("options", "stored"),
    [
        pytest.param(
            ["--rm"], {"Name": "no", "MaximumRetryCount": 0}, id="E-autoremove-with-no"
        ),
        pytest.param(
            ["--restart", "on-failure"],
            {"Name": "on-failure", "MaximumRetryCount": 0},
            id="F-on-failure-unlimited",
        ),
        pytest.param(
            ["--restart", ""], {"Name": "no", "MaximumRetryCount": 0}, id="G-empty-name"
        ),
    ],
)
def test_c03_docker_create_with_a_valid_restart_policy_stores_it_as_meant(
    docker, case, options, stored
):
    ok(docker("create", "--name", case, *options, "busybox:test", "true"))

    shown = ok(docker("inspect", "-f", "{{json .HostConfig.RestartPolicy}}", case))
    assert json.loads(shown.stdout) == stored


def test_c03_docker_run_rm_exits_0_and_the_container_is_gone(docker, daemon, name):
    result = docker("run", "--rm", "--name", name, "busybox:test", "true")

    assert result.returncode == 0
    assert daemon.request("GET", f"/containers/{name}/json").status == 404
    assert "No such object" in docker("inspect", name).stderr


# ---- C18 -------------------------------------------------------------------------


def test_c18_docker_events_are_ordered_and_state_is_consistent(
    docker, docker_env, case
):
    stream = subprocess.Popen(
        [DOCKER, "events", "--since", f"{time.time():.3f}", "--format", "{{json .}}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=docker_env,
    )
    # Read as it comes, so the pipe never fills and holds the stream up.
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        output = reader.submit(stream.stdout.read)
        try:
            for i in range(1, 31):
                ok(docker("run", "--name", f"{case}-{i}", "busybox:test", "true"))
                shown = ok(
                    docker(
                        "inspect",
                        "-f",
                        "{{.State.Status}} {{.State.Pid}}",
                        f"{case}-{i}",
                    )
                )
                assert shown.stdout == "exited 0\n", i
            ok(
                docker(
                    "run", "-d", "--name", case + "s", "busybox:test", "sleep", "300"
                )
            )
            ok(docker("stop", "-t", "1", case + "s"))
            failed = docker(
                "run", "--name", case + "x", "busybox:test", "/does-not-exist"
            )
            time.sleep(1)
        finally:
            stream.terminate()
        events = [json.loads(line) for line in output.result(5).splitlines()]

    def of(ref: str, *wanted: str) -> list[tuple[str, str]]:
        found = []
        for event in events:
            attrs = event["Actor"]["Attributes"]
            if attrs.get("name") == ref and (not wanted or event["Action"] in wanted):
                found.append(
                    (event["Action"], attrs.get("signal", attrs.get("exitCode", "")))
                )
        return found

    for i in range(1, 31):
        assert of(f"{case}-{i}") == [("create", ""), ("start", ""), ("die", "0")], i
    assert of(case + "s", "kill", "die", "stop") == [
        ("kill", "15"),
        ("kill", "9"),
        ("die", "137"),
        ("stop", ""),
    ]
    assert failed.returncode == 127
    assert of(case + "x", "start", "die") == []
    shown = ok(
        docker(
            "inspect",
            "-f",
            "{{.State.Error}}|{{.State.ExitCode}} {{.State.Running}}",
            case + "x",
        )
    ).stdout
    error, _, rest = shown.partition("|")
    assert "/does-not-exist" in error
    assert rest == "127 false\n"
    stamps = [e["timeNano"] for e in events]
    assert stamps == sorted(stamps)
