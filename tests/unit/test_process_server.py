"""The helper server without root: its protocol, how it places a helper's
fds, and the caller's handle on a helper it forked. Starting containers
through it is tested in tests/integration/test_helper_server.py."""

import json
import os
import select
import signal
import socket
import subprocess

import pytest

from runtime import _init, process
from runtime.process import ForkedHelper


@pytest.fixture
def server():
    """A real helper server and the test's end of its socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    popen = subprocess.Popen(
        [*process.SERVER_COMMAND, "--socket-fd", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    ours.settimeout(10)
    yield ours, popen
    ours.close()
    popen.wait(10)


def request(sock: socket.socket, message: bytes, fds: list[int]) -> dict:
    socket.send_fds(sock, [message], fds)
    return json.loads(sock.recv(4096))


@pytest.mark.parametrize(
    "message, fd_count",
    [
        (b"not json", 4),
        (b'{"mode": "attach", "fds": [10, 11]}', 4),
        (b'{"mode": "init", "fds": [10, 11]}', 3),
        (b'{"mode": "init", "fds": [10, 10]}', 4),
        (b'{"mode": "init", "fds": [2, 11]}', 4),
        (b'{"mode": "init", "fds": [10]}', 3),
    ],
    ids=["not-json", "unknown-mode", "fds-missing", "same-number", "low", "one-fd"],
)
def test_server_refuses_a_malformed_request_and_serves_on(server, message, fd_count):
    sock, _ = server
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(fd_count)]
    try:
        reply = request(sock, message, fds)
        again = request(sock, message, fds)
    finally:
        for fd in fds:
            os.close(fd)

    assert (
        reply
        == again
        == {
            "error": f"the helper server got a malformed request: {message!r} with "
            f"{fd_count} fds; check that corrald and the helper come from one "
            "corral installation"
        }
    )


def test_server_exits_when_the_other_end_closes(server):
    sock, popen = server

    sock.close()

    assert popen.wait(10) == 0


def test_server_closes_its_copies_of_the_requests_fds(server):
    sock, _ = server
    read_fd, write_fd = os.pipe()
    try:
        request(sock, b"{}", [write_fd])
        os.close(write_fd)

        # With every write end closed, the read end reports EOF at once.
        assert select.select([read_fd], [], [], 10)[0]
        assert os.read(read_fd, 1) == b""
    finally:
        os.close(read_fd)


def open_fds() -> list[int]:
    # fstat opens nothing, unlike a listing of /proc/self/fd.
    found = []
    for fd in range(256):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append(fd)
    return found


def test_placed_fds_are_exactly_the_wanted_ones_at_their_numbers():
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            # Two fds whose numbers each want the other's: placing one must
            # not overwrite the other.
            first = os.memfd_create("first")
            second = os.memfd_create("second")
            stray = os.open("/dev/null", os.O_RDONLY)
            os.set_inheritable(stray, True)
            _init.place_fds({1: write_fd, 2: write_fd, first: second, second: first})
            names = [os.readlink(f"/proc/self/fd/{fd}") for fd in (first, second)]
            report = {"fds": open_fds(), "names": names, "numbers": [first, second]}
            os.write(1, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as output:
        report = json.loads(output.read())
    os.waitpid(pid, 0)

    first, second = report["numbers"]
    assert report["fds"] == sorted([1, 2, first, second])
    assert report["names"] == ["/memfd:second (deleted)", "/memfd:first (deleted)"]


def test_forked_helper_waits_and_kills_like_a_popen():
    exited = ForkedHelper(os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], {}))
    killed = ForkedHelper(os.posix_spawn("/bin/sleep", ["sleep", "30"], {}))

    killed.kill()

    assert exited.wait() == 3
    assert exited.wait() == 3
    assert killed.wait() == -signal.SIGKILL
    killed.kill()  # reaped: nothing to kill, and the pid is not reused
