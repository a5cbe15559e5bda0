"""`docker top` against corrald: the real client shows the container's own
processes, passes ps options through, and prints the daemon's refusals."""

from daemon import wait_until
from dockercli import needs_docker, ok

pytestmark = needs_docker

THREE = "sleep 300 & sleep 301 & wait"
COMMANDS = [f"sh -c {THREE}", "sleep 300", "sleep 301"]


def table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """docker's top table as titles and rows; the last column keeps its spaces."""
    header, *lines = stdout.splitlines()
    titles = header.split()
    return titles, [line.split(None, len(titles) - 1) for line in lines]


def run_three(docker, name: str) -> str:
    container_id = ok(
        docker("run", "-d", "--name", name, "busybox:test", "sh", "-c", THREE)
    ).stdout.strip()
    wait_until(
        lambda: {"sleep 300", "sleep 301"}
        <= {row[-1] for row in table(ok(docker("top", name)).stdout)[1]},
        message="both sleeps in the container",
    )
    return container_id


def test_docker_top_shows_exactly_the_containers_processes(docker, daemon, case):
    run_three(docker, case)

    titles, rows = table(ok(docker("top", case)).stdout)

    assert titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert sorted(row[-1] for row in rows) == COMMANDS
    doc = daemon.api("GET", f"/containers/{case}/top")
    assert sorted(row[1] for row in rows) == sorted(r[1] for r in doc["Processes"])
    shell = next(row for row in rows if row[-1] == COMMANDS[0])
    assert int(shell[1]) == daemon.inspect(case)["State"]["Pid"]


def test_docker_top_passes_the_ps_options_after_the_container(docker, case):
    run_three(docker, case)

    titles, rows = table(ok(docker("top", case, "-o", "pid,comm")).stdout)

    assert titles == ["PID", "COMMAND"]
    assert sorted(row[1] for row in rows) == ["sh", "sleep", "sleep"]
    assert all(row[0].isdigit() for row in rows)


def test_docker_top_of_a_stopped_container_shows_the_daemons_message(docker, case):
    container_id = ok(docker("create", "--name", case, "busybox:test", "true"))
    container_id = container_id.stdout.strip()

    result = docker("top", case)

    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        f"Error response from daemon: Container {container_id} is not running"
        in result.stderr
    )


def test_docker_top_with_ps_options_ps_refuses_shows_the_reason(docker, case):
    run_three(docker, case)

    result = docker("top", case, "--bogus")

    assert result.returncode == 1
    assert (
        "Error response from daemon: invalid ps_args '--bogus': ps failed: "
        "error: unknown gnu long option" in result.stderr
    )
