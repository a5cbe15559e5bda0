"""runtime.process exec and init-program pieces that need no root:
validation, the helper's command line, and how the helper runs an init."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import _init
from runtime.process import ExecSpec, InitSpec, spawn_exec, spawn_init

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def make_exec_spec(**overrides) -> ExecSpec:
    fields = {
        "target_pid": 4242,
        "args": ["true"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": "",
    }
    return ExecSpec(**(fields | overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"target_pid": 0}, "invalid target pid 0: must be positive"),
        ({"args": []}, "without a command"),
        ({"args": ["echo", "a\0b"]}, "holds a NUL byte"),
        ({"user": "root\0"}, "holds a NUL byte"),
        ({"env": ["PATH=/bin", "JUSTANAME"]}, 'invalid environment entry "JUSTANAME"'),
        ({"env": ["=x"]}, 'invalid environment entry "=x"'),
        ({"cwd": ""}, 'invalid working directory ""'),
        ({"cwd": "tmp"}, 'invalid working directory "tmp"'),
    ],
)
def test_spawn_exec_refuses_an_invalid_spec_before_starting(overrides, message):
    with pytest.raises(ValueError, match=message):
        spawn_exec(make_exec_spec(**overrides), 1, 2)


def test_spawn_exec_refuses_a_pid_1_that_is_gone():
    # In a fresh interpreter: the subreaper flag cannot be cleared once set.
    probe = """
import os
from runtime import _sys, process
_sys.set_child_subreaper()
pid = os.posix_spawn("/bin/true", ["true"], {})
os.waitpid(pid, 0)
try:
    process.spawn_exec(process.ExecSpec(pid, ["true"], [], "/", ""), 1, 2)
except process.ContainerNotRunning as err:
    print(pid, err)
"""
    output = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    pid, message = output.rstrip("\n").split(" ", 1)
    assert message == (
        f"container is not running: its PID 1 (host pid {pid}) has exited; "
        "start the container, then exec again"
    )


def make_init_spec(**overrides) -> InitSpec:
    fields = {
        "args": ["true"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": "",
        "hostname": "probe",
        "network": "none",
        "rootfs_lower": ["/layers/a"],
        "rootfs_upper": "/c/upper",
        "rootfs_work": "/c/work",
        "rootfs_target": "/c/rootfs",
    }
    return InitSpec(**(fields | overrides))


def test_spawn_init_refuses_an_init_path_that_is_not_absolute():
    with pytest.raises(ValueError, match='invalid init program "tini"'):
        spawn_init(make_init_spec(init_path="tini"), 1, 2)


@pytest.mark.parametrize("name", ["missing", "plain"])
def test_spawn_init_refuses_an_init_path_that_cannot_run(tmp_path, name):
    (tmp_path / "plain").write_text("#!/bin/sh\n")
    path = tmp_path / name

    with pytest.raises(ValueError) as raised:
        spawn_init(make_init_spec(init_path=str(path)), 1, 2)

    assert str(raised.value) == (
        f"cannot use {path} as the container's init: not an executable file on "
        "this host; install Debian's tini package (apt-get install tini)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--spec-fd", "3", "--status-fd", "4"],
        ["--mode", "attach", "--spec-fd", "3", "--status-fd", "4"],
        ["--mode", "exec", "--spec-fd", "3"],
        ["--mode", "server", "--spec-fd", "3"],
    ],
    ids=["no-mode", "unknown-mode", "no-status-fd", "server-without-socket-fd"],
)
def test_helper_refuses_a_bad_command_line_with_its_usage(argv):
    helper = PROJECT_ROOT / "runtime" / "_init.py"

    result = subprocess.run(
        [sys.executable, "-I", "-S", str(helper), *argv],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 125
    assert result.stderr == (
        "usage: _init.py --mode init|exec --spec-fd N --status-fd M\n"
        "       _init.py --mode server --socket-fd N\n"
    )


def test_helper_reads_its_mode_and_fds():
    argv = ["--mode", "exec", "--spec-fd", "3", "--status-fd", "4"]

    assert _init.parse_args(argv) == ("exec", 3, 4)


def test_server_reads_its_socket_fd():
    assert _init.parse_args(["--mode", "server", "--socket-fd", "5"]) == ("server", 5)


def run_exec_command(args: list[str], init: str | None) -> tuple[int, str]:
    """Exit code and output of _init.exec_command in a forked child."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        try:
            _init.exec_command(args, ["PATH=/usr/bin:/bin"], init)
        except _init.SetupError as err:
            os.write(1, f"{err.exit_code} {err}".encode())
            os._exit(err.exit_code)
        os._exit(99)
    os.close(write_fd)
    with os.fdopen(read_fd) as output:
        text = output.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def test_an_init_gets_the_command_after_a_double_dash():
    # echo stands in for the init: it prints the argv it was given.
    code, output = run_exec_command(["sh", "-c", "exit 3"], init="/bin/echo")

    assert (code, output) == (0, "-- sh -c exit 3\n")


def test_a_command_missing_under_an_init_fails_before_the_init_runs():
    code, output = run_exec_command(["no-such-command"], init="/bin/echo")

    assert code == 127
    assert output == '127 exec: "no-such-command": executable file not found in $PATH'
