"""corrald itself: orderly shutdown, records across restarts and crashes, one
daemon per root and socket, and its socket's permissions."""

import json
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from daemon import BIN_DIR, Daemon, line_queue, unique_name, wait_until

IGNORES_TERM = ["sleep", "300"]  # PID 1 without a handler ignores SIGTERM
TRAPPING_SH = 'trap "exit 42" TERM; echo ready; while :; do sleep 1 & wait; done'


def state_of(daemon: Daemon, ref: str) -> dict:
    return daemon.inspect(ref)["State"]


def cgroups_of(daemon: Daemon, container_id: str) -> list[Path]:
    return [path for path in daemon.container_cgroups() if path.name == container_id]


def process_gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def test_sigterm_stops_running_containers_and_records_survive_the_restart(fresh_daemon):
    d = fresh_daemon
    names = {
        kind: unique_name(kind) for kind in ("exited", "created", "ignoring", "trap")
    }
    d.cli(
        "run",
        "--name",
        names["exited"],
        "busybox:test",
        "sh",
        "-c",
        "echo before; exit 3",
    )
    created = d.cli(
        "create", "--name", names["created"], "busybox:test", "true", check=True
    ).stdout.strip()
    ignoring = d.run_detached(
        "--name",
        names["ignoring"],
        "--stop-timeout",
        "1",
        "busybox:test",
        *IGNORES_TERM,
    )
    d.run_detached("--name", names["trap"], "busybox:test", "sh", "-c", TRAPPING_SH)
    wait_until(lambda: d.cli("logs", names["trap"]).stdout == "ready\n", message="trap")
    ids_before = {c["Id"] for c in d.api("GET", "/containers/json", all=1)}

    started = time.monotonic()
    code = d.stop(timeout_s=30)
    elapsed = time.monotonic() - started

    assert code == 0, d.log_path.read_text()[-3000:]
    assert 1 <= elapsed < 5
    assert not d.socket.exists()
    assert d.container_cgroups() == []

    d.start()

    assert {c["Id"] for c in d.api("GET", "/containers/json", all=1)} == ids_before
    assert (
        state_of(d, names["exited"])["Status"],
        state_of(d, names["exited"])["ExitCode"],
    ) == ("exited", 3)
    assert d.cli("logs", names["exited"]).stdout == "before\n"
    assert state_of(d, created)["Status"] == "created"
    assert (state_of(d, ignoring)["Status"], state_of(d, ignoring)["ExitCode"]) == (
        "exited",
        137,
    )
    assert state_of(d, names["trap"])["ExitCode"] == 42
    assert not any(state_of(d, n)["Running"] for n in names.values())


def test_sigterm_stops_containers_in_parallel_within_their_stop_timeouts(fresh_daemon):
    d = fresh_daemon
    for timeout_s in ("1", "3", "3"):
        d.run_detached("--stop-timeout", timeout_s, "busybox:test", *IGNORES_TERM)

    started = time.monotonic()
    code = d.stop(timeout_s=30)
    elapsed = time.monotonic() - started

    assert code == 0
    # One after another they would take 7 s.
    assert 3 <= elapsed < 6
    assert d.container_cgroups() == []


def test_records_survive_a_kill_9_of_the_daemon_and_the_running_one_is_settled(
    fresh_daemon,
):
    d = fresh_daemon
    running = d.run_detached(
        "--name", unique_name("running"), "busybox:test", *IGNORES_TERM
    )
    exited = d.cli(
        "create",
        "--name",
        unique_name("exited"),
        "busybox:test",
        "sh",
        "-c",
        "echo once; exit 4",
        check=True,
    ).stdout.strip()
    d.cli("start", exited, check=True)
    assert d.cli("wait", exited, check=True).stdout == "4\n"
    pid = state_of(d, running)["Pid"]
    cgroups = cgroups_of(d, running)
    assert cgroups

    d.crash()
    d.start()

    assert {c["Id"] for c in d.api("GET", "/containers/json", all=1)} == {
        running,
        exited,
    }
    state = state_of(d, running)
    assert (state["Status"], state["Running"], state["Pid"]) == ("exited", False, 0)
    assert "corrald stopped while the container was running" in state["Error"]
    assert not any(path.exists() for path in cgroups)
    wait_until(lambda: process_gone(pid), message=f"the old PID 1 ({pid}) to go")
    assert (state_of(d, exited)["Status"], state_of(d, exited)["ExitCode"]) == (
        "exited",
        4,
    )
    assert d.cli("logs", exited).stdout == "once\n"


def test_a_container_from_before_a_crash_can_be_started_again(fresh_daemon):
    d = fresh_daemon
    name = unique_name("again")
    d.run_detached("--name", name, "busybox:test", "sh", "-c", TRAPPING_SH)
    # The first run's line must be in the log before the crash, or the
    # count below would measure the crash's timing, not the restart.
    wait_until(lambda: "ready" in d.cli("logs", name).stdout, message="1st run")
    d.crash()
    d.start()

    d.cli("start", name, check=True)

    assert state_of(d, name)["Running"] is True
    wait_until(
        lambda: d.cli("logs", name).stdout.count("ready") == 2, message="2nd run"
    )
    d.cli("stop", name, check=True)
    assert state_of(d, name)["ExitCode"] == 42


def run_second_corrald(root: Path, socket: Path) -> subprocess.CompletedProcess:
    """A second corrald that must refuse to start; killed if it does start."""
    cgroup_parent = unique_name("corral-test-second")
    second = Daemon(root, cgroup_parent)
    proc = subprocess.Popen(
        [
            str(BIN_DIR / "corrald"),
            "--root",
            str(root / "state"),
            "--socket",
            str(socket),
            "--cgroup-parent",
            cgroup_parent,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    finally:
        second.cleanup_cgroups()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_second_corrald_on_the_same_root_refuses_to_start(fresh_daemon):
    d = fresh_daemon
    other_socket = Path(tempfile.mkdtemp(prefix="corral-2nd-")) / "corral.sock"

    result = run_second_corrald(d.root, other_socket)

    assert result.returncode != 0
    assert f"another corrald (pid {d.proc.pid}) holds {d.state_dir}/corrald.lock" in (
        result.stderr
    )
    assert not other_socket.exists()
    assert d.request("GET", "/_ping").status == 200
    other_socket.parent.rmdir()


def test_a_second_corrald_on_the_same_socket_refuses_to_start(fresh_daemon):
    d = fresh_daemon
    other_root = Path(tempfile.mkdtemp(prefix="corral-2nd-"))

    result = run_second_corrald(other_root, d.socket)

    assert result.returncode != 0
    assert f"another corrald (pid {d.proc.pid}) holds {d.socket}.lock" in result.stderr
    assert "give this one its own --root and --socket" in result.stderr
    assert d.request("GET", "/_ping").status == 200
    assert d.api("GET", "/containers/json", all=1) == []


def test_the_socket_is_mode_0660_and_is_removed_on_sigterm(fresh_daemon):
    d = fresh_daemon
    mode = d.socket.lstat().st_mode

    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660

    assert d.stop() == 0
    assert not d.socket.exists()


def test_sigint_shuts_down_like_sigterm(fresh_daemon):
    d = fresh_daemon
    container_id = d.run_detached("busybox:test", "sh", "-c", TRAPPING_SH)
    wait_until(lambda: d.cli("logs", container_id).stdout == "ready\n", message="ready")

    d.proc.send_signal(signal.SIGINT)

    assert d.proc.wait(timeout=15) == 0
    assert not d.socket.exists()
    assert d.container_cgroups() == []
    d.start()
    assert state_of(d, container_id)["ExitCode"] == 42


def test_the_cli_says_so_when_no_daemon_listens(tmp_path):
    socket = tmp_path / "nobody.sock"
    result = subprocess.run(
        [str(BIN_DIR / "corral"), "-H", f"unix://{socket}", "ps"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 1
    assert f"Cannot connect to the corral daemon at unix://{socket}" in result.stderr
    assert "Is corrald running?" in result.stderr


def test_sigterm_ends_follow_and_wait_clients_and_removes_rm_containers(fresh_daemon):
    d = fresh_daemon
    auto = d.run_detached("--rm", "busybox:test", "sh", "-c", TRAPPING_SH)
    kept = d.run_detached(
        "busybox:test",
        "sh",
        "-c",
        'trap "echo bye; exit 7" TERM; echo ready; while :; do sleep 1 & wait; done',
    )
    for ref in (auto, kept):
        wait_until(
            lambda ref=ref: d.cli("logs", ref).stdout.startswith("ready"),
            message="ready",
        )
    follower = d.cli_popen("logs", "-f", kept)
    # Streamed: the reply's headers come once the wait is in place.
    waiter = d.client.open("POST", f"/containers/{kept}/wait")
    lines = line_queue(follower)
    assert lines.get(timeout=10) == "ready\n"

    assert d.stop(timeout_s=30) == 0

    assert lines.get(timeout=10) == "bye\n"
    assert follower.wait(timeout=10) == 0
    assert json.loads(waiter.read()) == {"StatusCode": 7, "Error": None}
    d.start()
    assert [c["Id"] for c in d.api("GET", "/containers/json", all=1)] == [kept]
    assert not (d.state_dir / "containers" / auto).exists()


def test_an_rm_container_running_when_the_daemon_died_is_removed_on_restart(
    fresh_daemon,
):
    d = fresh_daemon
    auto = d.run_detached("--rm", "busybox:test", *IGNORES_TERM)
    cgroups = cgroups_of(d, auto)

    d.crash()
    d.start()

    assert d.request("GET", f"/containers/{auto}/json").status == 404
    assert d.api("GET", "/containers/json", all=1) == []
    assert not any(path.exists() for path in cgroups)
    assert not (d.state_dir / "containers" / auto).exists()
