"""runtime.process without root: status parsing, exit statuses, validation,
and the pieces of the init helper that need no namespaces."""

import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import _init
from runtime.process import (
    ExitStatus,
    InitSpec,
    StartResult,
    exit_status,
    parse_status,
    spawn_init,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def make_spec(**overrides) -> InitSpec:
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


def test_status_with_only_a_pid_is_a_started_container():
    assert parse_status(b'{"pid": 4242}\n') == StartResult(4242, None, None)


PID_LINE = b'{"pid": 4242}\n'
ERROR_LINE = b'{"error": "exec: \\"x\\": permission denied", "exit_code": 126}\n'


@pytest.mark.parametrize(
    "data",
    [PID_LINE + ERROR_LINE, ERROR_LINE + PID_LINE],
    ids=["pid-first", "error-first"],
)
def test_status_with_pid_and_error_keeps_both_in_any_order(data):
    assert parse_status(data) == StartResult(
        pid=4242, error='exec: "x": permission denied', exit_code=126
    )


def test_status_with_only_an_error_failed_before_pid_1_existed():
    data = b'{"error": "cannot join cgroup /x: no such file", "exit_code": 125}\n'

    assert parse_status(data) == StartResult(
        pid=None, error="cannot join cgroup /x: no such file", exit_code=125
    )


def test_empty_status_says_the_helper_did_not_report():
    result = parse_status(b"")

    assert result.pid is None
    assert result.exit_code == 125
    assert "exited without reporting" in result.error


@pytest.mark.parametrize(
    "data", [b'{"pid": 4242}\n{"err', b"Traceback (most recent call last)\n", b"[1]\n"]
)
def test_malformed_status_is_an_error_that_quotes_it(data):
    result = parse_status(data)

    assert result.exit_code == 125
    assert "malformed status" in result.error
    assert repr(data.splitlines()[-1]) in result.error


def test_status_of_a_truncated_message_keeps_the_pid_for_reaping():
    assert parse_status(b'{"pid": 4242}\n{"err').pid == 4242


def wait_exit(pid: int) -> ExitStatus:
    pidfd = os.pidfd_open(pid)
    try:
        assert select.select([pidfd], [], [], 10)[0], "child did not exit"
        return exit_status(pidfd)
    finally:
        os.close(pidfd)


def test_exit_status_of_a_normal_exit_is_its_code():
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], {})

    assert wait_exit(pid) == ExitStatus(exit_code=3, signal=None)


def test_exit_status_of_a_killed_process_is_128_plus_the_signal():
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "kill -9 $$"], {})

    assert wait_exit(pid) == ExitStatus(exit_code=137, signal=signal.SIGKILL)


def test_exit_status_of_a_running_process_is_none():
    pid = os.posix_spawn("/bin/sleep", ["sleep", "30"], {})
    pidfd = os.pidfd_open(pid)
    try:
        assert exit_status(pidfd) is None
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], 10)
        assert exit_status(pidfd).signal == signal.SIGKILL
    finally:
        os.close(pidfd)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"args": []}, "without a command"),
        ({"args": ["echo", "a\0b"]}, "holds a NUL byte"),
        ({"env": ["PATH=/bin", "JUSTANAME"]}, 'invalid environment entry "JUSTANAME"'),
        ({"cwd": "relative"}, 'invalid working directory "relative"'),
        ({"hostname": ""}, "without a hostname"),
        ({"network": "bridge"}, 'unknown network mode "bridge"'),
        ({"bind_files": {"etc/hosts": "/h"}}, 'invalid container path "etc/hosts"'),
        ({"rootfs_lower": ["/layers/a,b"]}, 'cannot use "/layers/a,b"'),
    ],
)
def test_spawn_init_refuses_an_invalid_spec_before_starting(overrides, message):
    with pytest.raises(ValueError, match=message):
        spawn_init(make_spec(**overrides), 1, 2)


def test_spawn_init_refuses_to_run_without_being_a_child_subreaper():
    # In a fresh interpreter: the flag cannot be cleared once a test sets it.
    probe = """
from runtime import _sys, process
assert not _sys.is_child_subreaper()
try:
    process.spawn_init(process.InitSpec(["true"], [], "/", "", "h", "none",
                                        ["/l"], "/u", "/w", "/t"), 1, 2)
except process.ProcessError as err:
    print(err)
_sys.set_child_subreaper()
print(_sys.is_child_subreaper())
"""
    output = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    refusal, flag = output.splitlines()
    assert "not a child subreaper" in refusal
    assert "set_child_subreaper()" in refusal
    assert flag == "True"


def test_helper_decodes_the_spec_exactly_as_json_does():
    spec = make_spec(
        args=["sh", "-c", 'echo "é\\t\u2603" $((1+2))'],
        env=["A=1", "B=x=y", "C=\x01"],
        cgroup_mounts=[("cgroup", "cpu,cpuacct"), ("cgroup2", "unified")],
        bind_files={"/etc/hosts": "/var/lib/corral/c/hosts"},
    )
    data = json.dumps(dataclasses.asdict(spec)).encode()
    spec_fd = os.memfd_create("spec", os.MFD_CLOEXEC)
    os.write(spec_fd, data)

    assert _init.read_spec(spec_fd) == json.loads(data)


def test_helper_error_line_is_json_the_daemon_parses():
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        _init.fail(write_fd, _init.SetupError('exec: "é\n\\": boom', 126))
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    data = os.read(read_fd, 4096)
    os.close(read_fd)

    assert os.waitstatus_to_exitcode(status) == 126
    assert parse_status(data) == StartResult(None, 'exec: "é\n\\": boom', 126)


def make_file(path: Path, mode: int) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_command_lookup_follows_path_and_skips_non_executables(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    make_file(first / "tool", 0o644)
    tool = make_file(second / "tool", 0o755)

    assert _init.find_executable("tool", f"{first}:{second}") == str(tool)


@pytest.mark.parametrize(
    "name, make, message, code",
    [
        ("missing", None, 'exec: "missing": executable file not found in $PATH', 127),
        ("/nope", None, 'exec: "/nope": stat /nope: no such file or directory', 127),
        ("{dir}/plain", 0o644, 'exec: "{dir}/plain": permission denied', 126),
        ("{dir}", None, 'exec: "{dir}": is a directory', 126),
    ],
)
def test_command_lookup_errors_read_like_dockers(tmp_path, name, make, message, code):
    if make is not None:
        make_file(tmp_path / "plain", make)

    with pytest.raises(_init.SetupError) as raised:
        _init.find_executable(name.format(dir=tmp_path), str(tmp_path))

    assert str(raised.value) == message.format(dir=tmp_path)
    assert raised.value.exit_code == code
