"""The real docker client, pointed at corrald with DOCKER_HOST, runs its
everyday commands successfully: the API is Docker-shaped enough for it."""

import secrets

import pytest
from daemon import wait_until
from dockercli import needs_docker, ok
from imagebuild import busybox_image, write_docker_archive, write_oci_archive

pytestmark = needs_docker


def test_docker_version_shows_corral_as_the_server(docker):
    result = ok(docker("version"))

    assert "Server: corral" in result.stdout
    assert "API version:      1.44" in result.stdout


def test_docker_info_shows_the_daemons_counts(docker, daemon):
    result = ok(docker("info", "--format", "{{.Images}} {{.CgroupDriver}} {{.NCPU}}"))

    info = daemon.api("GET", "/info")
    assert result.stdout.split() == [str(info["Images"]), "cgroupfs", str(info["NCPU"])]


def test_docker_run_d_starts_a_container_that_ps_and_inspect_see(docker, daemon, name):
    container_id = ok(
        docker(
            "run",
            "-d",
            "--name",
            name,
            "busybox:test",
            "sh",
            "-c",
            "echo hello from corral; sleep 300",
        )
    ).stdout.strip()

    assert daemon.inspect(name)["Id"] == container_id
    assert name in ok(docker("ps")).stdout
    inspected = ok(
        docker(
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Running}} {{.Config.Hostname}}",
            name,
        )
    )
    assert inspected.stdout == f"running true {container_id[:12]}\n"
    wait_until(
        lambda: ok(docker("logs", name)).stdout == "hello from corral\n",
        message="the log line",
    )


def test_docker_run_rm_streams_output_and_propagates_the_exit_code(
    docker, daemon, name
):
    result = docker(
        "run",
        "--rm",
        "--name",
        name,
        "busybox:test",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 3",
    )

    assert result.returncode == 3
    assert result.stdout == "to-out\n"
    assert result.stderr == "to-err\n"
    wait_until(
        lambda: daemon.request("GET", f"/containers/{name}/json").status == 404,
        message="the --rm container to go",
    )


def test_docker_run_without_rm_keeps_the_exited_container(docker, name):
    result = docker(
        "run", "--name", name, "busybox:test", "sh", "-c", "echo done; exit 5"
    )

    assert (result.returncode, result.stdout) == (5, "done\n")
    assert (
        ok(
            docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name)
        ).stdout
        == "exited 5\n"
    )
    assert name in ok(docker("ps", "-a")).stdout
    assert name not in ok(docker("ps")).stdout


def test_docker_run_with_a_missing_executable_exits_127(docker, name):
    result = docker("run", "--name", name, "busybox:test", "/no/such-binary")

    assert result.returncode == 127
    assert "/no/such-binary" in result.stderr


def test_docker_logs_shows_both_streams(docker, name):
    ok(
        docker(
            "run",
            "--name",
            name,
            "busybox:test",
            "sh",
            "-c",
            "echo out; sleep 0.1; echo err >&2",
        )
    )

    result = ok(docker("logs", name))
    tail = ok(docker("logs", "--tail", "1", name))

    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert (tail.stdout, tail.stderr) == ("", "err\n")


def test_docker_stop_and_rm_remove_a_running_container(docker, daemon, name):
    ok(docker("run", "-d", "--name", name, "busybox:test", "sleep", "300"))

    stopped = ok(docker("stop", "-t", "1", name))
    exit_code = ok(docker("inspect", "-f", "{{.State.ExitCode}}", name)).stdout
    removed = ok(docker("rm", name))

    assert stopped.stdout == f"{name}\n"
    assert exit_code == "137\n"
    assert removed.stdout == f"{name}\n"
    assert name not in ok(docker("ps", "-a")).stdout
    assert daemon.request("GET", f"/containers/{name}/json").status == 404


def test_docker_rm_of_a_running_container_needs_force(docker, name):
    ok(docker("run", "-d", "--name", name, "busybox:test", "sleep", "300"))

    refused = docker("rm", name)
    forced = docker("rm", "-f", name)

    assert refused.returncode == 1
    assert "You cannot remove a running container" in refused.stderr
    assert ok(forced).stdout == f"{name}\n"


def test_docker_ps_a_lists_containers_with_filters(docker, name):
    ok(docker("create", "--name", name, "busybox:test", "true"))

    result = ok(
        docker(
            "ps", "-a", "--filter", f"name={name}", "--format", "{{.Names}} {{.Status}}"
        )
    )

    assert result.stdout == f"{name} Created\n"


def test_docker_images_lists_busybox(docker):
    result = ok(docker("images", "--format", "{{.Repository}}:{{.Tag}}"))

    assert "busybox:test" in result.stdout.split()


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_docker_load_and_rmi_round_trip(docker, tmp_path, fmt):
    tag = f"compat-{fmt}-{secrets.token_hex(3)}:v1"
    image = busybox_image([tag], extra_layers=[{"marker": f"{tag}\n"}])
    archive = tmp_path / "image.tar"
    (write_oci_archive if fmt == "oci" else write_docker_archive)(archive, [image])

    loaded = ok(docker("load", "-i", str(archive)))
    ran = ok(docker("run", "--rm", tag, "cat", "/marker"))
    listed = ok(docker("images", "--format", "{{.Repository}}:{{.Tag}}")).stdout.split()
    removed = ok(docker("rmi", tag))

    assert loaded.stdout == f"Loaded image: {tag}\n"
    assert ran.stdout == f"{tag}\n"
    assert tag in listed
    assert f"Untagged: {tag}" in removed.stdout
    assert (
        tag
        not in ok(
            docker("images", "--format", "{{.Repository}}:{{.Tag}}")
        ).stdout.split()
    )


def test_docker_load_of_a_corrupt_archive_fails_with_the_reason(docker, tmp_path):
    archive = tmp_path / "corrupt.tar"
    archive.write_bytes(b"not a tar archive\n" * 100)
    before = ok(docker("images", "-q")).stdout

    result = docker("load", "-i", str(archive))

    assert result.returncode == 1
    assert "not a valid tar archive" in result.stderr
    assert ok(docker("images", "-q")).stdout == before


def test_docker_inspect_of_an_unknown_container_fails(docker):
    result = docker("inspect", "no-such-container-compat")

    assert result.returncode == 1
    assert "No such object: no-such-container-compat" in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["-m", "4m"],
            (
                "Error response from daemon: memory limit 4194304 bytes is too "
                "small: the minimum is 6 MiB"
            ),
        ),
        (
            ["--restart", "bogus"],
            "Error response from daemon: invalid restart policy 'bogus'",
        ),
    ],
)
def test_docker_run_with_a_bad_limit_shows_the_daemons_reason(
    docker, name, flags, message
):
    result = docker("run", "--name", name, *flags, "busybox:test", "true")

    assert result.returncode == 125
    assert message in result.stderr
    assert docker("inspect", name).returncode == 1


def test_docker_kill_s_restart_stop_and_wait(docker, daemon, name):
    ok(
        docker(
            "run",
            "-d",
            "--name",
            name,
            "busybox:test",
            "sh",
            "-c",
            'trap "echo usr1" USR1; trap "exit 9" TERM; echo up; '
            "while :; do sleep 1 & wait; done",
        )
    )
    wait_until(lambda: ok(docker("logs", name)).stdout == "up\n", message="up")

    ok(docker("kill", "-s", "USR1", name))
    wait_until(lambda: ok(docker("logs", name)).stdout == "up\nusr1\n", message="usr1")
    ok(docker("restart", "-t", "5", name))
    wait_until(
        lambda: ok(docker("logs", name)).stdout == "up\nusr1\nup\n",
        message="the second run",
    )
    ok(docker("stop", name))

    assert ok(docker("wait", name)).stdout == "9\n"
    assert daemon.inspect(name)["State"]["Status"] == "exited"


def test_docker_create_and_start_a_apply_the_run_flags(docker, name):
    ok(
        docker(
            "create",
            "--name",
            name,
            "-e",
            "GREETING=hi",
            "-w",
            "/srv",
            "-u",
            "nobody",
            "--hostname",
            "box1",
            "--cpus",
            "0.5",
            "-m",
            "64m",
            "--pids-limit",
            "30",
            "busybox:test",
            "sh",
            "-c",
            'echo "$GREETING $(pwd) $(id -u) $(hostname)"',
        )
    )

    started = ok(docker("start", "-a", name))
    limits = ok(
        docker(
            "inspect",
            "-f",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} "
            "{{.HostConfig.PidsLimit}} {{.State.ExitCode}}",
            name,
        )
    )

    assert started.stdout == "hi /srv 65534 box1\n"
    assert limits.stdout == f"500000000 {64 << 20} 30 0\n"
