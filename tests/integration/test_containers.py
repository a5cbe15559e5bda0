"""Containers driven through a real corrald with the `corral` CLI and the API:
what the command sees inside, the limits the kernel enforces, and the
lifecycle commands (run, ps, stop, kill, restart, wait, rm)."""

import json
import secrets
import signal
import time
from pathlib import Path

import pytest
from daemon import line_queue, wait_until

from runtime.cgroups import Layout, detect_layout

CGROUP_ROOT = Path("/sys/fs/cgroup")
LAYOUT = detect_layout()
# PID 1 of a pid namespace ignores SIGTERM unless it installs a handler; this
# one does, exits with 42 on it, and stays interruptible while it waits.
TRAPPING_SH = (
    'trap "echo got TERM; exit 42" TERM; echo ready; while :; do sleep 1 & wait; done'
)


def v1_dir(controller: str) -> str:
    """The host's v1 hierarchy directory holding `controller` ("cpu,cpuacct")."""
    for path in CGROUP_ROOT.iterdir():
        if controller in path.name.split(",") and not path.is_symlink():
            return path.name
    raise AssertionError(f"no v1 hierarchy holds {controller}")


def file_in_container(controller: str, v1_name: str, v2_name: str) -> str:
    """Where a container reads its own cgroup file on this host's layout."""
    if LAYOUT is Layout.V2:
        return f"/sys/fs/cgroup/{v2_name}"
    return f"/sys/fs/cgroup/{v1_dir(controller)}/{v1_name}"


def host_cgroup_file(daemon, container_id: str, controller: str, name: str) -> Path:
    if LAYOUT is Layout.V2:
        return CGROUP_ROOT / daemon.cgroup_parent / container_id / name
    return CGROUP_ROOT / v1_dir(controller) / daemon.cgroup_parent / container_id / name


def logs_of(daemon, ref: str) -> str:
    return daemon.cli("logs", ref, check=True).stdout


def wait_for_log(daemon, ref: str, text: str, timeout_s: float = 10) -> str:
    return wait_until(
        lambda: text in logs_of(daemon, ref) and logs_of(daemon, ref),
        timeout_s,
        message=f"{text!r} in the logs of {ref}",
    )


# ---- what the command sees inside ----------------------------------------------


def test_pid_1_inside_is_the_command(daemon):
    cmdline = daemon.cli(
        "run", "--rm", "busybox:test", "cat", "/proc/1/cmdline", check=True
    )
    shell = daemon.cli(
        "run", "--rm", "busybox:test", "sh", "-c", "echo $$; true", check=True
    )

    assert cmdline.stdout == "cat\0/proc/1/cmdline\0"
    assert shell.stdout == "1\n"


def test_proc_shows_only_the_containers_own_processes(daemon, name):
    marker = f"sleep {300 + secrets.randbelow(100)}"
    daemon.run_detached("--name", name, "busybox:test", *marker.split())

    result = daemon.cli(
        "run", "--rm", "busybox:test", "ps", "-o", "pid,args", check=True
    )

    rows = result.stdout.splitlines()[1:]
    assert [row.split(None, 1)[1] for row in rows] == ["ps -o pid,args"]
    assert rows[0].split()[0] == "1"
    assert marker not in result.stdout


def test_hostname_defaults_to_the_first_12_characters_of_the_id(daemon, name):
    result = daemon.cli(
        "run",
        "--name",
        name,
        "busybox:test",
        "sh",
        "-c",
        "hostname; cat /etc/hostname",
        check=True,
    )

    container_id = daemon.inspect(name)["Id"]
    assert result.stdout.splitlines() == [container_id[:12]] * 2
    assert daemon.inspect(name)["Config"]["Hostname"] == container_id[:12]


def test_hostname_flag_sets_the_containers_hostname(daemon):
    result = daemon.cli(
        "run",
        "--rm",
        "--hostname",
        "web-1",
        "busybox:test",
        "sh",
        "-c",
        "hostname; cat /etc/hostname; grep -c web-1 /etc/hosts",
        check=True,
    )

    assert result.stdout.splitlines() == ["web-1", "web-1", "1"]


def test_host_files_outside_the_rootfs_are_invisible(daemon, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("host only\n")

    result = daemon.cli(
        "run",
        "--rm",
        "busybox:test",
        "sh",
        "-c",
        f"test -e {secret}; echo secret=$?; test -e /etc/os-release; "
        "echo os_release=$?; cat /etc/passwd; ls /",
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["secret=1", "os_release=1"]
    assert "root:x:0:0:root:/root:/bin/sh" in lines
    assert not any(line.startswith(("daemon:", "_apt")) for line in lines)
    top_level = set(" ".join(lines[4:]).split())
    assert top_level <= {"bin", "dev", "etc", "proc", "root", "sys", "tmp"}


def test_env_flags_are_added_to_the_images_env(daemon):
    result = daemon.cli(
        "run",
        "--rm",
        "-e",
        "GREETING=hello world",
        "-e",
        "EMPTY=",
        "busybox:test",
        "env",
        check=True,
    )

    env = result.stdout.splitlines()
    assert "GREETING=hello world" in env
    assert "EMPTY=" in env
    assert any(line.startswith("PATH=/usr/local/sbin:") for line in env)


def test_workdir_flag_sets_and_creates_the_working_directory(daemon):
    result = daemon.cli(
        "run", "--rm", "-w", "/srv/app", "busybox:test", "pwd", check=True
    )

    assert result.stdout == "/srv/app\n"


@pytest.mark.parametrize(
    "user, expected",
    [
        ("nobody", "65534 65534"),
        ("1234:5678", "1234 5678"),
    ],
)
def test_user_flag_sets_uid_and_gid(daemon, user, expected):
    result = daemon.cli(
        "run",
        "--rm",
        "-u",
        user,
        "busybox:test",
        "sh",
        "-c",
        'echo "$(id -u) $(id -g)"',
        check=True,
    )

    assert result.stdout.strip() == expected


def test_entrypoint_flag_replaces_the_images_entrypoint_and_command(daemon, name):
    result = daemon.cli(
        "run",
        "--name",
        name,
        "--entrypoint",
        "echo",
        "busybox:test",
        "hello",
        "world",
        check=True,
    )

    assert result.stdout == "hello world\n"
    record = daemon.inspect(name)
    assert (record["Path"], record["Args"]) == ("echo", ["hello", "world"])
    assert record["Config"]["Entrypoint"] == ["echo"]


# ---- corral run ------------------------------------------------------------


def test_run_streams_both_streams_and_exits_with_the_containers_code(daemon, name):
    result = daemon.cli(
        "run",
        "--name",
        name,
        "busybox:test",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 7",
    )

    assert result.returncode == 7
    assert result.stdout == "to-out\n"
    assert result.stderr == "to-err\n"
    state = daemon.inspect(name)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 7)


def test_run_streams_output_while_the_container_still_runs(daemon, name):
    runner = daemon.cli_popen(
        "run",
        "--name",
        name,
        "busybox:test",
        "sh",
        "-c",
        'trap "echo second; exit 6" USR1; echo first; while :; do sleep 1 & wait; done',
    )
    lines = line_queue(runner)
    try:
        assert lines.get(timeout=10) == "first\n"
        assert daemon.inspect(name)["State"]["Running"] is True

        daemon.cli("kill", "-s", "USR1", name, check=True)

        assert lines.get(timeout=10) == "second\n"
        assert runner.wait(timeout=10) == 6
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 7), (signal.SIGINT, 130)])
def test_a_signal_to_an_attached_run_goes_to_the_container(daemon, name, sig, code):
    # As docker run does without a TTY: the container gets the signal, and
    # the CLI shows what it does about it and exits with its exit code.
    runner = daemon.cli_popen(
        "run", "--rm", "--init", "--name", name, "busybox:test", "sh", "-c",
        'trap "echo got TERM; exit 7" TERM; echo ready; while :; do sleep 1 & wait; done',
    )
    lines = line_queue(runner)
    try:
        assert lines.get(timeout=10) == "ready\n"

        runner.send_signal(sig)

        if sig == signal.SIGTERM:
            assert lines.get(timeout=10) == "got TERM\n"
        assert runner.wait(timeout=10) == code
        assert daemon.request("GET", f"/containers/{name}/json").status == 404
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


def test_run_exits_125_when_the_daemon_refuses_a_memory_limit(daemon, name):
    result = daemon.cli("run", "--name", name, "-m", "1m", "busybox:test", "true")

    assert result.returncode == 125
    assert "minimum is 6 MiB" in result.stderr
    assert daemon.cli("inspect", name).returncode == 1


@pytest.mark.parametrize(
    "flags, words",
    [
        (["-p", "8080:80"], "published ports (-p) (HostConfig.PortBindings)"),
        (["-P"], "published ports (-P)"),
        (["-t"], "a TTY (-t) (Config.Tty)"),
        (["-i"], "an open stdin (-i)"),
        (["-v", "/srv:/srv"], "bind mounts (-v) (HostConfig.Binds)"),
        (["--mount", "type=tmpfs,dst=/x"], "mounts (--mount)"),
        (["--privileged"], "privileged mode (--privileged)"),
        (["--cap-add", "NET_ADMIN"], "added capabilities (--cap-add)"),
        (["--device", "/dev/sda"], "devices (--device)"),
        (["--link", "other"], "links (--link)"),
        (["--volumes-from", "other"], "--volumes-from"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "",
)
def test_run_with_an_unsupported_docker_option_exits_125_naming_it(
    daemon, name, flags, words
):
    result = daemon.cli("run", "--name", name, *flags, "busybox:test", "true")

    assert result.returncode == 125
    assert words in result.stderr
    assert "is not supported by this version of corral" in result.stderr
    assert daemon.cli("inspect", name).returncode == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cpus", "abc"], "invalid --cpus 'abc': give a number of CPUs"),
        (["--rm", "--restart", "bogus"], "invalid restart policy 'bogus': use one of"),
    ],
)
def test_run_with_a_bad_option_value_exits_125_saying_what_is_wrong(
    daemon, flags, message
):
    result = daemon.cli("run", *flags, "busybox:test", "true")

    assert result.returncode == 125
    assert message in result.stderr


def test_ps_format_fields_are_dockers(daemon, name):
    container_id = daemon.run_detached("--name", name, "-l", "tier=web",
                                       "busybox:test", "sleep", "300")

    shown = daemon.cli("ps", "--filter", f"name={name}", "--format",
                       "{{.ID}}|{{.Names}}|{{.Image}}|{{.Command}}|{{.Labels}}|"
                       "{{.State}}|{{.Networks}}", check=True).stdout

    assert shown == (f'{container_id[:12]}|{name}|busybox:test|"sleep 300"|tier=web|'
                     "running|none\n")
    as_json = json.loads(daemon.cli("ps", "--filter", f"name={name}", "--format",
                                    "json", check=True).stdout)
    assert as_json["Names"] == name
    assert as_json["Status"].startswith("Up ")


def test_run_exits_125_for_an_unknown_image(daemon):
    result = daemon.cli("run", "--rm", "nosuch/image:1", "true")

    assert result.returncode == 125
    assert "No such image: nosuch/image:1" in result.stderr


def test_run_exits_127_for_a_missing_executable_and_state_error_names_it(daemon, name):
    result = daemon.cli("run", "--name", name, "busybox:test", "/no/such-binary")

    assert result.returncode == 127
    assert "/no/such-binary" in result.stderr
    record = daemon.inspect(name)
    assert record["State"]["ExitCode"] == 127
    assert "/no/such-binary" in record["State"]["Error"]
    assert record["State"]["Running"] is False
    assert [p for p in daemon.container_cgroups() if p.name == record["Id"]] == []


@pytest.mark.parametrize(
    "command, code", [("/no/such-binary", 127), ("/etc/passwd", 126)]
)
def test_run_rm_of_a_command_that_cannot_run_exits_126_or_127_and_leaves_nothing(
    daemon, name, command, code
):
    before = daemon.snapshot()

    result = daemon.cli("run", "--rm", "--name", name, "busybox:test", command)

    assert result.returncode == code, result.stderr
    assert command in result.stderr
    assert daemon.request("GET", f"/containers/{name}/json").status == 404
    after = daemon.snapshot()
    assert (after.ids, after.cgroups) == (before.ids, before.cgroups)


def test_run_rm_removes_the_container_after_it_exits(daemon, name):
    result = daemon.cli(
        "run", "--rm", "--name", name, "busybox:test", "sh", "-c", "echo bye; exit 3"
    )

    assert (result.returncode, result.stdout) == (3, "bye\n")
    assert "No such object" in daemon.cli("inspect", name).stderr
    assert name not in daemon.cli("ps", "-a").stdout


def test_detached_run_rm_is_removed_when_its_command_ends(daemon, name):
    container_id = daemon.run_detached(
        "--rm", "--name", name, "busybox:test", "sh", "-c", TRAPPING_SH
    )
    wait_for_log(daemon, name, "ready")
    response = daemon.client.open(
        "POST", f"/containers/{container_id}/wait", {"condition": "removed"}
    )

    daemon.cli("kill", "-s", "TERM", name, check=True)

    assert json.loads(response.read())["StatusCode"] == 42
    assert daemon.request("GET", f"/containers/{container_id}/json").status == 404
    assert not (daemon.state_dir / "containers" / container_id).exists()


# ---- limits the kernel enforces ------------------------------------------------


def test_memory_limit_lands_in_the_cgroup_and_a_hog_is_oom_killed(daemon, name):
    limit_file = file_in_container("memory", "memory.limit_in_bytes", "memory.max")

    result = daemon.cli(
        "run",
        "--name",
        name,
        "-m",
        "16m",
        "busybox:test",
        "sh",
        "-c",
        f"cat {limit_file}; exec dd if=/dev/zero of=/dev/null bs=64M count=1",
    )

    assert result.stdout.splitlines()[0] == str(16 * 1024 * 1024)
    assert result.returncode == 137
    state = daemon.inspect(name)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 137)
    assert daemon.inspect(name)["HostConfig"]["Memory"] == 16 * 1024 * 1024


def test_an_automatic_restart_keeps_the_limits_and_starts_the_peak_again(daemon, name):
    # The restart reuses the run's cgroup, emptied: the next run has the same
    # limit, and on v1 a peak of its own; v2 cannot reset memory.peak, so
    # there the peak covers both runs.
    limit_file = file_in_container("memory", "memory.limit_in_bytes", "memory.max")
    daemon.run_detached(
        "--name", name, "--restart", "on-failure:1", "--restart-delay", "0",
        "-m", "64m", "busybox:test", "sh", "-c",
        f"cat {limit_file}; [ -e /ran ] && exit 0; touch /ran; "
        "dd if=/dev/zero of=/dev/null bs=40M count=1 2>/dev/null; exit 3",
    )

    wait_until(
        lambda: len(daemon.inspect(name)["State"].get("CorralTerminations") or []) == 2,
        15, message="two runs",
    )

    shown = daemon.inspect(name)
    assert shown["RestartCount"] == 1
    assert logs_of(daemon, name).split() == [str(64 << 20)] * 2
    first, second = shown["State"]["CorralTerminations"]
    assert (first["ExitCode"], second["ExitCode"]) == (3, 0)
    assert first["PeakMemoryBytes"] >= 40 << 20
    if LAYOUT is Layout.V2:
        assert second["PeakMemoryBytes"] >= first["PeakMemoryBytes"]
    else:
        assert second["PeakMemoryBytes"] < 16 << 20


def test_pids_limit_contains_a_fork_bomb_and_the_container_still_stops(daemon, name):
    container_id = daemon.run_detached(
        "--name",
        name,
        "--pids-limit",
        "20",
        "busybox:test",
        "sh",
        "-c",
        'sh -c "while :; do sleep 300 & done"; echo bomb-done; exec sleep 300',
    )

    wait_for_log(daemon, name, "bomb-done")
    current = host_cgroup_file(daemon, container_id, "pids", "pids.current")
    assert 0 < int(current.read_text()) <= 20
    side = daemon.cli(
        "run", "--rm", "busybox:test", "echo", "still serving", timeout=10
    )
    assert (side.returncode, side.stdout) == (0, "still serving\n")

    started = time.monotonic()
    daemon.cli("stop", "-t", "1", name, check=True, timeout=10)

    assert time.monotonic() - started < 5
    state = daemon.inspect(name)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 137)
    # The cgroup's removal finishes just after stop's reply.
    wait_until(lambda: not current.parent.exists(), 5, message="the cgroup removed")


def test_pids_limit_lands_in_the_cgroup(daemon):
    pids_max = file_in_container("pids", "pids.max", "pids.max")

    result = daemon.cli(
        "run", "--rm", "--pids-limit", "20", "busybox:test", "cat", pids_max, check=True
    )

    assert result.stdout == "20\n"


def test_cpus_lands_in_the_cgroup_as_quota_over_period(daemon, name):
    if LAYOUT is Layout.V2:
        command, expected = "cat /sys/fs/cgroup/cpu.max", "50000 100000\n"
    else:
        cpu = v1_dir("cpu")
        command = (
            f"cat /sys/fs/cgroup/{cpu}/cpu.cfs_quota_us "
            f"/sys/fs/cgroup/{cpu}/cpu.cfs_period_us"
        )
        expected = "50000\n100000\n"

    result = daemon.cli(
        "run",
        "--name",
        name,
        "--cpus",
        "0.5",
        "busybox:test",
        "sh",
        "-c",
        command,
        check=True,
    )

    assert result.stdout == expected
    assert daemon.inspect(name)["HostConfig"]["NanoCpus"] == 500_000_000


# ---- finding containers --------------------------------------------------------


def test_a_container_is_found_by_full_id_unique_prefix_and_name(daemon, name):
    container_id = daemon.cli(
        "create", "--name", name, "busybox:test", "sh", "-c", "exit 4", check=True
    ).stdout.strip()

    for ref in (container_id, container_id[:12], name):
        assert daemon.inspect(ref)["Id"] == container_id, ref
    daemon.cli("start", container_id[:12], check=True)
    assert daemon.cli("wait", name, check=True).stdout == "4\n"


def test_ps_lists_running_by_default_and_all_with_a(daemon, name):
    running = daemon.run_detached(
        "--name", f"{name}-up", "busybox:test", "sleep", "300"
    )
    daemon.cli("run", "--name", f"{name}-done", "busybox:test", "true", check=True)

    default = daemon.cli("ps", "--filter", f"name={name}", check=True).stdout
    everything = daemon.cli("ps", "-a", "--filter", f"name={name}", check=True).stdout

    assert f"{name}-up" in default and f"{name}-done" not in default
    assert f"{name}-up" in everything and f"{name}-done" in everything
    assert "Exited (0)" in everything
    assert running[:12] in default


def test_ps_keeps_a_multi_line_command_on_one_escaped_row(daemon, name):
    daemon.cli(
        "create", "--name", name, "busybox:test", "sh", "-c", "echo a\necho\tb",
        check=True,
    )

    out = daemon.cli("ps", "-a", "--no-trunc", "--filter", f"name={name}", check=True)

    header, row = out.stdout.splitlines()
    assert header.startswith("CONTAINER ID")
    assert '"sh -c \'echo a\\necho\\tb\'"' in row


def test_ps_quiet_filters_by_name_and_status(daemon, name):
    up = daemon.run_detached("--name", f"{name}-up", "busybox:test", "sleep", "300")
    done = daemon.cli(
        "create", "--name", f"{name}-done", "busybox:test", "true", check=True
    ).stdout.strip()
    daemon.cli("start", done, check=True)
    daemon.cli("wait", done, check=True)

    def ps_q(*filters):
        args = [arg for f in filters for arg in ("--filter", f)]
        return daemon.cli("ps", "-aq", *args, check=True).stdout.split()

    assert sorted(ps_q(f"name={name}")) == sorted([up[:12], done[:12]])
    assert ps_q(f"name={name}", "status=running") == [up[:12]]
    assert ps_q(f"name={name}", "status=exited") == [done[:12]]
    assert ps_q(f"name=^{name}-done$") == [done[:12]]
    assert ps_q(f"name={name}", "status=paused") == []


# ---- stop, kill, restart -------------------------------------------------------


def test_stop_kills_a_pid_1_that_ignores_sigterm_after_the_timeout(daemon, name):
    daemon.run_detached("--name", name, "busybox:test", "sleep", "300")

    started = time.monotonic()
    result = daemon.cli("stop", "-t", "1", name, timeout=15)
    elapsed = time.monotonic() - started

    assert (result.returncode, result.stdout) == (0, f"{name}\n")
    assert 1 <= elapsed < 5
    state = daemon.inspect(name)["State"]
    assert (state["Status"], state["Running"], state["ExitCode"]) == (
        "exited",
        False,
        137,
    )


def test_stop_of_a_trapping_shell_exits_promptly_with_its_own_code(daemon, name):
    daemon.run_detached("--name", name, "busybox:test", "sh", "-c", TRAPPING_SH)
    wait_for_log(daemon, name, "ready")

    started = time.monotonic()
    daemon.cli("stop", "-t", "10", name, check=True, timeout=15)

    assert time.monotonic() - started < 5
    assert daemon.inspect(name)["State"]["ExitCode"] == 42
    assert logs_of(daemon, name) == "ready\ngot TERM\n"


def test_stopping_a_stopped_container_changes_nothing(daemon, name):
    daemon.cli("run", "--name", name, "busybox:test", "sh", "-c", "exit 3")

    reply = daemon.request("POST", f"/containers/{name}/stop")

    assert reply.status == 304
    assert daemon.inspect(name)["State"]["ExitCode"] == 3


def test_kill_s_delivers_the_signal_and_kill_defaults_to_sigkill(daemon, name):
    daemon.run_detached(
        "--name",
        name,
        "busybox:test",
        "sh",
        "-c",
        'trap "echo got USR1" USR1; echo ready; while :; do sleep 1 & wait; done',
    )
    wait_for_log(daemon, name, "ready")

    daemon.cli("kill", "-s", "USR1", name, check=True)
    wait_for_log(daemon, name, "got USR1")
    assert daemon.inspect(name)["State"]["Running"] is True

    daemon.cli("kill", name, check=True)
    wait_until(lambda: not daemon.inspect(name)["State"]["Running"], message="exit")
    assert daemon.inspect(name)["State"]["ExitCode"] == 137


def test_kill_of_a_stopped_container_is_a_conflict(daemon, name):
    daemon.cli("create", "--name", name, "busybox:test", "true", check=True)

    result = daemon.cli("kill", name)

    assert result.returncode == 1
    assert "is not running" in result.stderr


def test_restart_runs_the_container_again_with_a_new_pid_1(daemon, name):
    daemon.run_detached("--name", name, "busybox:test", "sh", "-c", TRAPPING_SH)
    wait_for_log(daemon, name, "ready")
    before = daemon.inspect(name)["State"]

    daemon.cli("restart", "-t", "5", name, check=True, timeout=15)

    after = daemon.inspect(name)["State"]
    assert after["Running"] is True
    assert after["Pid"] != before["Pid"]
    assert after["StartedAt"] > before["StartedAt"]
    wait_until(lambda: logs_of(daemon, name).count("ready") == 2, message="second run")
    assert "got TERM" in logs_of(daemon, name)


def test_restart_starts_an_exited_container(daemon, name):
    daemon.cli("run", "--name", name, "busybox:test", "echo", "ran", check=True)

    daemon.cli("restart", name, check=True)

    wait_until(lambda: logs_of(daemon, name) == "ran\nran\n", message="second run")
    assert daemon.inspect(name)["State"]["Status"] == "exited"


# ---- wait and rm ---------------------------------------------------------------


def test_wait_not_running_on_an_exited_container_returns_its_code_at_once(daemon, name):
    daemon.cli("run", "--name", name, "busybox:test", "sh", "-c", "exit 9")

    response = daemon.client.open(
        "POST", f"/containers/{name}/wait", {"condition": "not-running"}
    )

    assert json.loads(response.read()) == {"StatusCode": 9, "Error": None}
    assert daemon.cli("wait", name).stdout == "9\n"


def test_wait_next_exit_waits_for_the_next_run(daemon, name):
    # The first run exits 5 and marks the upper dir; the next exits 6.
    daemon.cli(
        "run",
        "--name",
        name,
        "busybox:test",
        "sh",
        "-c",
        "test -e /ran && exit 6; touch /ran; exit 5",
    )
    assert daemon.inspect(name)["State"]["ExitCode"] == 5

    response = daemon.client.open(
        "POST", f"/containers/{name}/wait", {"condition": "next-exit"}
    )
    daemon.cli("start", name, check=True)

    assert json.loads(response.read())["StatusCode"] == 6


def test_wait_removed_returns_when_the_container_is_removed(daemon, name):
    daemon.run_detached("--name", name, "busybox:test", "sleep", "300")
    response = daemon.client.open(
        "POST", f"/containers/{name}/wait", {"condition": "removed"}
    )

    daemon.cli("rm", "-f", name, check=True)

    assert json.loads(response.read())["StatusCode"] == 137
    assert daemon.request("GET", f"/containers/{name}/json").status == 404


def test_rm_f_removes_a_running_container_and_its_cgroup_and_files(daemon, name):
    container_id = daemon.run_detached("--name", name, "busybox:test", "sleep", "300")
    cgroups = [path for path in daemon.container_cgroups() if path.name == container_id]
    assert cgroups

    result = daemon.cli("rm", "-f", name)

    assert (result.returncode, result.stdout) == (0, f"{name}\n")
    assert not (daemon.state_dir / "containers" / container_id).exists()
    # The cgroup's removal finishes just after the reply (it waits for the
    # kernel to drop its pressure triggers).
    wait_until(lambda: not any(path.exists() for path in cgroups), 5,
               message="the cgroup removed")
    assert name not in daemon.cli("ps", "-a").stdout
