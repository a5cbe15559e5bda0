"""The helper server: helpers forked from one long-lived interpreter.

Each test starts real containers from a busybox rootfs through
runtime.process, as the other integration tests do, and checks what the
server changes for the caller (nothing it can see, the speed aside) and how
it copes with a server that dies, hangs or cannot start. Misbehaving servers
are small real programs put in place of the server's command.
"""

import os
import select
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from rootfs import (
    BUSYBOX,
    TIMEOUT_S,
    Container,
    build_busybox_layer,
    helper_path,
)

from runtime import _sys, process
from runtime.process import ExitStatus, ForkedHelper, ProcessError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root for namespaces, mounts and cgroups"
    ),
    pytest.mark.skipif(
        not BUSYBOX.exists(), reason=f"needs a static busybox at {BUSYBOX}"
    ),
]

# Stands in for the server: takes one request, then does {then}.
FAKE_SERVER = """
import os, socket, sys, time
sock = socket.socket(fileno=int(sys.argv[-1]))
data, fds, _, _ = socket.recv_fds(sock, 4096, 8)
{then}
"""
DIES_UNANSWERED = "os._exit(0)"
# Its child keeps the request's fds (as a helper would) but not the socket.
LEAVES_A_CHILD_WITH_THE_FDS = """
pid = os.fork()
if pid == 0:
    sock.close()
    time.sleep(30)
    os._exit(0)
with open(sys.argv[1], "w") as file:
    file.write(str(pid))
os._exit(0)
"""
NEVER_ANSWERS = "time.sleep(60)"


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> None:
    _sys.set_child_subreaper()


@pytest.fixture(autouse=True)
def served():
    with helper_path("server"):
        yield


@pytest.fixture(scope="module")
def lower(tmp_path_factory) -> Path:
    return build_busybox_layer(tmp_path_factory.mktemp("busybox-layer"))


@pytest.fixture
def box(tmp_path, lower):
    container = Container(tmp_path / "container", [lower])
    yield container
    container.kill_leftovers()


def fake_server(monkeypatch, then: str, *args: str) -> None:
    code = FAKE_SERVER.format(then=then)
    monkeypatch.setattr(process, "SERVER_COMMAND", [sys.executable, "-c", code, *args])


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of each process whose parent is pid."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid:
            children.append((int(entry.name), state))
    return children


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


def wait_reaped(pid: int) -> ExitStatus:
    """The exit status of a child of this process, once it has exited."""
    pidfd = os.pidfd_open(pid)
    try:
        assert select.select([pidfd], [], [], TIMEOUT_S)[0], f"{pid} did not exit"
        return process.exit_status(pidfd)
    finally:
        os.close(pidfd)


def test_pid_1_and_the_helper_are_children_of_the_caller_not_the_server(box):
    spawned = box.spawn(box.spec(["sleep", "60"]))
    result, _ = box.started(spawned)

    assert isinstance(spawned.helper, ForkedHelper)
    # wait_started reaped the helper with waitpid, which only its parent can.
    assert spawned.helper.returncode == 0
    assert parent_of(result.pid) == os.getpid()
    assert process.server_pid() not in (None, os.getpid())


def test_fifty_starts_issued_before_any_is_read_all_run_and_leave_no_zombies(
    tmp_path, lower
):
    boxes = [Container(tmp_path / f"c{index}", [lower]) for index in range(50)]
    try:
        spawned = [box.spawn(box.spec(["sh", "-c", "echo $$"])) for box in boxes]
        started = [box.started(one) for box, one in zip(boxes, spawned, strict=True)]
        exits = [
            box.wait(pidfd) for box, (_, pidfd) in zip(boxes, started, strict=True)
        ]
        server_children = children_of(process.server_pid())
    finally:
        for box in boxes:
            box.kill_leftovers()

    assert [result.error for result, _ in started] == [None] * 50
    assert len({result.pid for result, _ in started}) == 50
    assert exits == [ExitStatus(exit_code=0, signal=None)] * 50
    assert [(box.base / "stdout").read_text() for box in boxes] == ["1\n"] * 50
    assert [one.helper.returncode for one in spawned] == [0] * 50
    assert server_children == []


def test_no_fd_of_the_server_or_the_caller_reaches_pid_1(box):
    # An inheritable fd of the caller's, as a careless library leaves.
    stray = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(stray, True)
    try:
        result, _ = box.start(box.spec(["sleep", "60"]))
        run = box.exec(result.pid, ["ls", "/proc/1/fd"])
    finally:
        os.close(stray)

    assert run.stdout.split() == ["0", "1", "2"]


def test_a_server_killed_between_starts_is_replaced_unnoticed(box):
    box.run(["echo", "first"])
    killed = process.server_pid()

    os.kill(killed, signal.SIGKILL)
    pidfd = os.pidfd_open(killed)
    select.select([pidfd], [], [], TIMEOUT_S)
    os.close(pidfd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = box.run(["echo", "second"])

    assert run.start.error is None
    assert run.stdout == "first\nsecond\n"
    assert process.server_pid() not in (None, killed)
    # Reaped when it was replaced.
    assert (killed, "Z") not in children_of(os.getpid())


def test_stop_server_ends_it_and_the_next_start_brings_another(box):
    box.run(["true"])
    stopped = process.server_pid()

    process.stop_server()
    after_stop = process.server_pid()
    run = box.run(["echo", "started"])

    assert after_stop is None
    assert not Path(f"/proc/{stopped}").exists()
    assert run.stdout == "started\n"
    assert process.server_pid() not in (None, stopped)


STARTS_A_SERVER_AND_EXITS = """
import os
from runtime import _sys, process
_sys.set_child_subreaper()
process.start_server()
print(process.server_pid(), flush=True)
os._exit(0)
"""


def test_the_server_exits_when_its_caller_does():
    output = subprocess.run(
        [sys.executable, "-c", STARTS_A_SERVER_AND_EXITS],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )

    # Orphaned, it came to this process, the nearest subreaper.
    assert wait_reaped(int(output.stdout)) == ExitStatus(exit_code=0, signal=None)


def test_turned_off_each_helper_is_a_new_interpreter_and_no_server_runs(box):
    process.use_server(False)

    spawned = box.spawn(box.spec(["echo", "direct"]))
    _, pidfd = box.started(spawned)

    assert isinstance(spawned.helper, subprocess.Popen)
    assert process.server_pid() is None
    assert box.wait(pidfd) == ExitStatus(exit_code=0, signal=None)
    assert (box.base / "stdout").read_text() == "direct\n"


def test_a_server_that_cannot_start_gives_way_to_new_interpreters_with_one_warning(
    box, monkeypatch
):
    monkeypatch.setattr(process, "SERVER_COMMAND", [sys.executable, "-c", "exit(3)"])

    with pytest.warns(RuntimeWarning) as warned:
        first = box.run(["echo", "first"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = box.run(["echo", "second"])

    assert [str(warning.message) for warning in warned] == [
        (
            "the container init helper server cannot run: it exited before "
            "answering (status 3), and so did the one started in its place "
            "(status 3); any error it printed is on corrald's stderr; each "
            "container start and exec now starts a new interpreter instead, "
            "some 8 ms slower; restart corrald to use the server again"
        )
    ]
    assert (first.start.error, second.start.error) == (None, None)
    assert second.stdout == "first\nsecond\n"
    assert process.server_pid() is None


def test_fallback_warning_goes_to_the_callers_handler(box, monkeypatch):
    monkeypatch.setattr(process, "SERVER_COMMAND", [sys.executable, "-c", "exit(3)"])
    messages = []

    process.start_server(on_fallback=messages.append)
    try:
        run = box.run(["true"])
    finally:
        process.start_server()

    assert run.start.error is None
    assert len(messages) == 1
    assert "(status 3)" in messages[0]


def test_a_server_dying_with_a_request_unanswered_is_replaced_then_given_up(
    box, monkeypatch
):
    fake_server(monkeypatch, DIES_UNANSWERED)

    with pytest.warns(RuntimeWarning, match=r"exited before answering \(status 0\)"):
        run = box.run(["echo", "started"])

    assert run.start.error is None
    assert run.stdout == "started\n"


def test_a_dead_servers_request_whose_fds_live_on_is_not_sent_twice(
    box, tmp_path, monkeypatch
):
    # Whoever holds the request's status pipe may be a helper that runs: a
    # second request would start a second container.
    pid_file = tmp_path / "holder-pid"
    fake_server(monkeypatch, LEAVES_A_CHILD_WITH_THE_FDS, str(pid_file))

    with pytest.raises(ProcessError) as raised:
        box.spawn(box.spec(["true"]))
    holder = int(pid_file.read_text())
    os.kill(holder, signal.SIGKILL)
    wait_reaped(holder)

    assert str(raised.value) == (
        "cannot start the container init helper: the helper server stopped "
        "while it started one, which may run on; it will be restarted at the "
        "next start or exec"
    )
    assert process.server_pid() is None


def test_a_server_that_does_not_answer_is_replaced_at_the_next_start(box, monkeypatch):
    fake_server(monkeypatch, NEVER_ANSWERS)
    monkeypatch.setattr(process, "SERVER_REPLY_TIMEOUT_S", 0.5)

    with pytest.raises(ProcessError) as raised:
        box.spawn(box.spec(["true"]))
    stuck_gone = process.server_pid() is None
    monkeypatch.undo()
    run = box.run(["echo", "started"])

    assert "did not answer within 0.5 s; it is stopped" in str(raised.value)
    assert stuck_gone
    assert run.stdout == "started\n"
