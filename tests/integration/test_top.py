"""`GET /containers/{id}/top` and `corral top` on real containers: the host's
ps output cut down to the container's own processes, with host pids."""

import time
from urllib.parse import quote

import pytest
from daemon import wait_until

THREE = "sleep 300 & sleep 301 & wait"
COMMANDS = [f"sh -c {THREE}", "sleep 300", "sleep 301"]


def start_three(daemon, name: str) -> str:
    """A container of a shell and its two sleeps, once both sleeps run."""
    container_id = daemon.run_detached(
        "--name", name, "busybox:test", "sh", "-c", THREE
    )
    wait_until(
        lambda: {"sleep 300", "sleep 301"} <= set(commands(top(daemon, name))),
        message="both sleeps in the container",
    )
    return container_id


def top(daemon, ref: str, ps_args: str | None = None) -> dict:
    query = {"ps_args": ps_args} if ps_args is not None else {}
    return daemon.api("GET", f"/containers/{ref}/top", **query)


def commands(doc: dict) -> list[str]:
    return sorted(row[-1] for row in doc["Processes"])


def column(doc: dict, title: str) -> list[str]:
    index = doc["Titles"].index(title)
    return [row[index] for row in doc["Processes"]]


def cgroup_pids(daemon, container_id: str) -> set[int]:
    pids = set()
    for directory in daemon.container_cgroups():
        if directory.name == container_id:
            pids |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
    return pids


def top_request(daemon, ref: str, ps_args: str):
    return daemon.request("GET", f"/containers/{ref}/top?ps_args={quote(ps_args)}")


def stopped_container(daemon, name: str, how: str) -> str:
    if how == "created":
        return daemon.cli("create", "--name", name, "busybox:test", "true",
                          check=True).stdout.strip()
    container_id = daemon.run_detached("--name", name, "busybox:test", "true")
    daemon.cli("wait", name, check=True)
    return container_id


# ---- the API ---------------------------------------------------------------------


def test_top_lists_exactly_the_containers_processes_as_ps_ef_does(daemon, name):
    container_id = start_three(daemon, name)

    doc = top(daemon, name)

    assert doc["Titles"] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert commands(doc) == COMMANDS
    assert all(len(row) == len(doc["Titles"]) for row in doc["Processes"])
    pids = {int(pid) for pid in column(doc, "PID")}
    assert pids == cgroup_pids(daemon, container_id)
    shell = next(row for row in doc["Processes"] if row[-1] == COMMANDS[0])
    assert int(shell[1]) == daemon.inspect(name)["State"]["Pid"]
    sleeps = [row for row in doc["Processes"] if row[-1].startswith("sleep")]
    assert [row[2] for row in sleeps] == [shell[1], shell[1]]


def test_top_takes_the_columns_ps_args_asks_for(daemon, name):
    start_three(daemon, name)

    doc = top(daemon, name, "-o pid,comm")

    assert doc["Titles"] == ["PID", "COMMAND"]
    assert sorted(column(doc, "COMMAND")) == ["sh", "sleep", "sleep"]
    assert column(doc, "PID") == column(top(daemon, name), "PID")


def test_top_lists_a_long_command_whole(daemon, name):
    # Wider than any terminal: a corrald started under pytest (or from a
    # shell) inherits COLUMNS, at which ps would cut its lines.
    script = "sleep 300; : " + "x" * 400
    daemon.run_detached("--name", name, "busybox:test", "sh", "-c", script)
    wait_until(lambda: top(daemon, name)["Processes"], message="the container's sh")

    doc = top(daemon, name)

    assert f"sh -c {script}" in commands(doc)


def test_top_with_a_listing_that_refuses_a_pid_list_still_keeps_the_containers_rows(
    daemon, name
):
    # ps refuses -q with a forest (f): the daemon runs it again without it.
    start_three(daemon, name)

    doc = top(daemon, name, "faux")

    assert doc["Titles"][:2] == ["USER", "PID"]
    assert sorted(row[-1].lstrip("|\\_ ") for row in doc["Processes"]) == COMMANDS


def test_top_publishes_a_top_event(daemon, name):
    container_id = start_three(daemon, name)
    since_ns = time.time_ns()

    top(daemon, name)

    events = daemon.events(since_ns, container=[name])
    assert [(e["Action"], e["id"]) for e in events] == [("top", container_id)]


@pytest.mark.parametrize("how", ["created", "exited"])
def test_top_of_a_container_that_is_not_running_is_409(daemon, name, how):
    container_id = stopped_container(daemon, name, how)

    reply = daemon.request("GET", f"/containers/{name}/top")

    assert reply.status == 409
    assert reply.json()["message"] == f"Container {container_id} is not running"


def test_top_of_an_unknown_container_is_404_naming_it(daemon):
    reply = daemon.request("GET", "/containers/no-such-box/top")

    assert reply.status == 404
    assert reply.json()["message"] == "No such container: no-such-box"


@pytest.mark.parametrize(
    "ps_args, message",
    [
        ("--bogus", "ps failed: error: unknown gnu long option; give options"),
        ("-o comm", "ps printed no PID column (its titles: COMMAND); include the pid"),
        ("-o comm=PID", "comm=PID titles a column PID, and only the pid column"),
        ("-o lstart,pid", "in the PID column is not a pid; a column before it"),
    ],
)
def test_top_with_ps_args_it_cannot_use_is_400_saying_what_to_change(
    daemon, name, ps_args, message
):
    start_three(daemon, name)

    reply = top_request(daemon, name, ps_args)

    assert reply.status == 400
    assert reply.json()["message"].startswith(f"invalid ps_args {ps_args!r}: ")
    assert message in reply.json()["message"]


# ---- the CLI ---------------------------------------------------------------------


def test_corral_top_prints_the_processes_as_an_aligned_table(daemon, name):
    start_three(daemon, name)
    doc = top(daemon, name)

    result = daemon.cli("top", name, check=True)

    header, *rows = result.stdout.splitlines()
    assert header.split() == doc["Titles"]
    starts = [header.index(title) for title in ["UID", "PID", "PPID", "CMD"]]
    printed = sorted(
        [row[s:].split()[0] for s in starts[:3]] + [row[starts[3]:]] for row in rows
    )
    assert printed == sorted([r[0], r[1], r[2], r[-1]] for r in doc["Processes"])
    assert result.stderr == ""


def test_corral_top_passes_the_ps_options_after_the_container(daemon, name):
    start_three(daemon, name)

    result = daemon.cli("top", name, "-o", "pid,comm", check=True)

    header, *rows = result.stdout.splitlines()
    assert header.split() == ["PID", "COMMAND"]
    assert sorted(row.split()[1] for row in rows) == ["sh", "sleep", "sleep"]
    assert sorted(row.split()[0] for row in rows) == sorted(
        column(top(daemon, name), "PID")
    )


def test_corral_top_of_a_stopped_container_exits_1_with_the_daemons_message(
    daemon, name
):
    container_id = stopped_container(daemon, name, "exited")

    result = daemon.cli("top", name)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Error response from daemon: Container {container_id} is not running\n"
    )


def test_corral_top_with_bad_ps_options_exits_1_with_the_reason(daemon, name):
    start_three(daemon, name)

    result = daemon.cli("top", name, "--bogus")

    assert result.returncode == 1
    assert result.stderr.startswith(
        "Error response from daemon: invalid ps_args '--bogus': ps failed: "
    )
