"""Exec into a running container, and an init program as its PID 1.

Each test starts a real container from a busybox rootfs built in a temp dir,
whose PID 1 writes a file and waits; it runs probes in it through
runtime.process.spawn_exec and checks what they print, the start result and
the exit statuses, as the daemon would see them.
"""

import os
import pwd
import re
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from rootfs import (
    BUSYBOX,
    HELPER_PATHS,
    PATH,
    TIMEOUT_S,
    Container,
    build_busybox_layer,
    helper_path,
    make_cgroups,
    remove_cgroup,
    signals_blocked_and_ignored,
    unique_cgroup_parent,
    wait_for_output,
)

from runtime import _sys
from runtime.process import (
    DEFAULT_INIT_PATH,
    ContainerNotRunning,
    ExitStatus,
    exit_status,
)

NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "uts")
# PID 1 leaves a file for the probes, says it is ready, and waits.
PID_1_COMMAND = "echo from-pid-1 > /tmp/marker; echo ready; exec sleep 300"
NEEDS_TINI = pytest.mark.skipif(
    not Path(DEFAULT_INIT_PATH).exists(),
    reason=f"needs {DEFAULT_INIT_PATH} from Debian's tini package",
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root for namespaces, mounts and cgroups"
    ),
    pytest.mark.skipif(
        not BUSYBOX.exists(), reason=f"needs a static busybox at {BUSYBOX}"
    ),
]


@dataclass
class Target:
    """A running container's PID 1, as the daemon holds it."""

    pid: int
    pidfd: int


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> None:
    _sys.set_child_subreaper()


@pytest.fixture(scope="module", autouse=True, params=HELPER_PATHS)
def helpers_started(request, subreaper):
    """Every test runs with helpers forked by the helper server, then with
    helpers started each in a new interpreter."""
    with helper_path(request.param):
        yield request.param


@pytest.fixture(scope="module")
def lower(tmp_path_factory) -> Path:
    return build_busybox_layer(tmp_path_factory.mktemp("busybox-layer"))


@pytest.fixture
def box(tmp_path, lower):
    container = Container(tmp_path / "container", [lower])
    yield container
    container.kill_leftovers()


@pytest.fixture
def target(box) -> Target:
    return start_target(box)


def start_target(box: Container, command: str = PID_1_COMMAND, **overrides):
    result, pidfd = box.start(box.spec(["sh", "-c", command], **overrides))
    assert result.error is None, result
    wait_for_output(box.base / "stdout", "ready\n")
    return Target(result.pid, pidfd)


@pytest.fixture
def cgroups():
    """Test-owned leaf cgroups and their mounts; request it before box, so
    that it is torn down after the container is gone."""
    parent = unique_cgroup_parent()
    try:
        leaves, mounts = make_cgroups(parent)
    except LookupError as err:
        pytest.skip(str(err))
    yield leaves, mounts
    for leaf in leaves:
        remove_cgroup(leaf)
        remove_cgroup(leaf.parent)


def test_exec_joins_every_namespace_of_pid_1(box, target):
    probe = f"""
        for ns in {" ".join(NAMESPACES)}; do
            echo $ns $(readlink /proc/self/ns/$ns) $(readlink /proc/1/ns/$ns)
        done
    """

    run = box.exec(target.pid, ["sh", "-c", probe])

    for line, name in zip(run.stdout.splitlines(), NAMESPACES, strict=True):
        ns_name, own, pid_1s = line.split()
        host_view = os.readlink(f"/proc/{target.pid}/ns/{name}")
        assert (ns_name, own) == (name, pid_1s)
        assert own == host_view
        assert own != os.readlink(f"/proc/self/ns/{name}")


def test_exec_sees_the_containers_hostname(box):
    target = start_target(box, hostname="probe-host")

    run = box.exec(target.pid, ["hostname"])

    assert run.stdout == "probe-host\n"
    assert run.exit == ExitStatus(exit_code=0, signal=None)


def test_exec_sees_the_containers_processes_with_the_command_as_pid_1(box, target):
    run = box.exec(target.pid, ["sh", "-c", "echo $$; ps -o pid,args"])

    own_pid, _, *processes = run.stdout.splitlines()
    assert own_pid != "1"
    # busybox sh runs its last command, ps, in its own process.
    assert [line.split(None, 1)[0] for line in processes] == ["1", own_pid]
    assert processes[0].split(None, 1)[1] == "sleep 300"


def test_exec_shares_the_containers_filesystem_and_nothing_of_the_hosts(
    box, target, tmp_path
):
    probe = f"""
        cat /tmp/marker
        echo from-exec > /tmp/written
        test -e {tmp_path} && echo host path visible
        test -e {box.rootfs} && echo rootfs path visible
        pwd
    """

    run = box.exec(target.pid, ["sh", "-c", probe])

    assert run.stdout == "from-pid-1\n/\n"
    assert (box.upper / "tmp" / "written").read_text() == "from-exec\n"


def test_exec_under_network_none_sees_only_lo(box, target):
    probe = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ls /sys/class/net"

    run = box.exec(target.pid, ["sh", "-c", probe])

    assert run.stdout.split() == ["lo", "lo"]


def test_exec_under_network_host_sees_the_hosts_interfaces(box):
    target = start_target(box, network="host")

    probe = "readlink /proc/self/ns/net; ls /sys/class/net"
    run = box.exec(target.pid, ["sh", "-c", probe])

    namespace, *interfaces = run.stdout.split()
    assert namespace == os.readlink("/proc/self/ns/net")
    assert interfaces == sorted(os.listdir("/sys/class/net"))


def test_exec_joins_the_containers_cgroups(cgroups, box):
    leaves, mounts = cgroups
    target = start_target(
        box,
        cgroup_procs=[str(leaf / "cgroup.procs") for leaf in leaves],
        cgroup_mounts=mounts,
    )
    inside_procs = ["/sys/fs/cgroup/cgroup.procs"]
    if len(leaves) == 2:
        inside_procs = [f"/sys/fs/cgroup/{name}/cgroup.procs" for _, name in mounts]
    probe = f"""
        echo $$
        echo --
        cat /proc/self/cgroup
        echo --
        cat /proc/1/cgroup
        echo --
        cat {" ".join(inside_procs)}
    """

    run = box.exec(
        target.pid,
        ["sh", "-c", probe],
        cgroup_procs=[str(leaf / "cgroup.procs") for leaf in leaves],
    )

    own_pid, own_groups, pid_1_groups, procs = run.stdout.split("--\n")
    assert own_groups == pid_1_groups
    assert "0::/\n" in own_groups
    # In each tree: PID 1, the probe's shell and its cat; nothing else.
    procs = procs.split()
    assert len(procs) == 3 * len(leaves)
    assert procs.count("1") == procs.count(own_pid.strip()) == len(leaves)


def test_exec_env_is_exactly_the_spec_env(box, target):
    env = [f"PATH={PATH}", "GREETING=hello world", "EMPTY=", "EQUALS=a=b"]

    run = box.exec(target.pid, ["env"], env=env)

    assert run.stdout.splitlines() == env


@pytest.mark.parametrize(
    "user, expected",
    [
        ("", "uid=0(root) gid=0(root)"),
        ("nobody", "uid=65534(nobody) gid=65534(nobody)"),
        ("1000:1000", "uid=1000 gid=1000"),
        (
            "corral-probe",
            "uid=4321(corral-probe) gid=4322(corral-probe) groups=4323(corral-extra)",
        ),
    ],
)
def test_exec_user_is_looked_up_in_the_containers_files(box, target, user, expected):
    run = box.exec(target.pid, ["id"], user=user)

    assert run.stdout == expected + "\n"


def test_exec_user_known_only_to_the_image_is_not_on_the_host():
    # The premise of the corral-probe case above.
    with pytest.raises(KeyError):
        pwd.getpwnam("corral-probe")


def test_exec_unknown_user_fails_with_a_clear_error(box, target):
    result, pidfd, _ = box.start_exec(box.exec_spec(target.pid, ["id"], user="bob"))

    assert result.error == "unable to find user bob: no matching entries in passwd file"
    assert result.exit_code == 125
    assert box.wait(pidfd) == ExitStatus(exit_code=125, signal=None)


def test_exec_cwd_is_applied_as_the_user(box, target):
    run = box.exec(target.pid, ["sh", "-c", "pwd; id -u"], cwd="/tmp", user="nobody")

    assert run.stdout == "/tmp\n65534\n"


def test_exec_into_a_missing_cwd_fails_and_creates_nothing(box, target):
    spec = box.exec_spec(target.pid, ["pwd"], cwd="/no/such/dir")

    result, pidfd, _ = box.start_exec(spec)

    assert result.error == (
        "cannot change to working directory /no/such/dir: no such file or directory"
    )
    assert box.wait(pidfd) == ExitStatus(exit_code=125, signal=None)
    assert not (box.upper / "no").exists()


def test_exec_exit_code_is_propagated(box, target):
    run = box.exec(target.pid, ["sh", "-c", "exit 7"])

    assert run.start.error is None
    assert run.exit == ExitStatus(exit_code=7, signal=None)


def test_exec_of_a_command_not_in_path_exits_127(box, target):
    run = box.exec(target.pid, ["no-such-command"])

    assert run.start.error == (
        'exec: "no-such-command": executable file not found in $PATH'
    )
    assert run.start.exit_code == 127
    assert run.exit == ExitStatus(exit_code=127, signal=None)


def test_exec_of_a_non_executable_file_exits_126(box, target):
    run = box.exec(target.pid, ["/etc/passwd"])

    assert run.start.error == 'exec: "/etc/passwd": permission denied'
    assert run.exit == ExitStatus(exit_code=126, signal=None)


def test_exec_into_a_reaped_pid_1_is_refused(box, target):
    signal.pidfd_send_signal(target.pidfd, signal.SIGKILL)
    box.wait(target.pidfd)

    with pytest.raises(ContainerNotRunning) as raised:
        box.start_exec(box.exec_spec(target.pid, ["true"]))

    assert str(raised.value) == (
        f"container is not running: its PID 1 (host pid {target.pid}) has "
        "exited; start the container, then exec again"
    )


def test_exec_into_an_exited_pid_1_not_yet_reaped_reports_not_running(box, target):
    signal.pidfd_send_signal(target.pidfd, signal.SIGKILL)
    assert select.select([target.pidfd], [], [], TIMEOUT_S)[0]

    result, pidfd, _ = box.start_exec(box.exec_spec(target.pid, ["true"]))

    assert pidfd is None
    assert result.error == (
        f"container is not running: its PID 1 (host pid {target.pid}) has "
        "exited; start the container, then exec again"
    )
    assert result.exit_code == 125
    assert box.wait(target.pidfd) == ExitStatus(exit_code=137, signal=signal.SIGKILL)


def test_exec_process_dies_when_pid_1_dies(box, target):
    result, pidfd, _ = box.start_exec(box.exec_spec(target.pid, ["sleep", "300"]))

    signal.pidfd_send_signal(target.pidfd, signal.SIGKILL)

    assert result.error is None
    assert box.wait(pidfd) == ExitStatus(exit_code=137, signal=signal.SIGKILL)
    assert box.wait(target.pidfd) == ExitStatus(exit_code=137, signal=signal.SIGKILL)


def test_killing_an_exec_through_its_pidfd_leaves_the_container_running(box, target):
    _, pidfd, _ = box.start_exec(box.exec_spec(target.pid, ["sleep", "300"]))

    signal.pidfd_send_signal(pidfd, signal.SIGKILL)

    assert box.wait(pidfd) == ExitStatus(exit_code=137, signal=signal.SIGKILL)
    assert exit_status(target.pidfd) is None
    assert box.exec(target.pid, ["cat", "/tmp/marker"]).stdout == "from-pid-1\n"


def test_killing_an_execs_process_group_reaches_its_descendants(box, target):
    probe = "sleep 301 & sleep 302 & echo started; wait"
    result, pidfd, out_dir = box.start_exec(
        box.exec_spec(target.pid, ["sh", "-c", probe])
    )
    wait_for_output(out_dir / "stdout", "started\n")
    # The forked shells must have become sleeps before the kill, or their
    # zombies are named sh.
    assert wait_for_sleeps(box, target, ["S", "S", "S"]) == ["S", "S", "S"]

    os.killpg(result.pid, signal.SIGKILL)

    assert box.wait(pidfd) == ExitStatus(exit_code=137, signal=signal.SIGKILL)
    # PID 1 (sleep 300) sleeps on; the killed sleeps are its zombies, as it
    # reaps nothing.
    assert wait_for_sleeps(box, target, ["S", "Z", "Z"]) == ["S", "Z", "Z"]


def test_exec_leaks_no_daemon_descriptor(box, target):
    # An inheritable descriptor of the daemon's, as a careless library leaves.
    stray = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(stray, True)
    try:
        run = box.exec(target.pid, ["ls", "-l", "/proc/self/fd"])
    finally:
        os.close(stray)

    entries = [line.split()[-3] for line in run.stdout.splitlines() if " -> " in line]
    assert sorted(entries) == ["0", "1", "2"]


def test_exec_resets_the_signal_mask_and_ignored_signals(box, target):
    with signals_blocked_and_ignored():
        run = box.exec(target.pid, ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"])

    assert run.stdout.split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16]


def test_exec_leads_a_session_of_its_own(box, target):
    run = box.exec(target.pid, ["sh", "-c", "cut -d' ' -f5,6 /proc/$$/stat; echo $$"])

    session, own_pid = run.stdout.splitlines()
    assert session == f"{own_pid} {own_pid}"


def wait_for_sleeps(box: Container, target: Target, expected: list[str]):
    """The sorted states of the container's sleep processes, once they are
    as expected or after TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        states = sorted(
            state for comm, state in process_states(box, target) if comm == "sleep"
        )
        if states == expected or time.monotonic() > deadline:
            return states
        time.sleep(0.05)


def process_states(box: Container, target: Target) -> list[tuple[str, str]]:
    """(comm, state) of each process in the container but the probe."""
    run = box.exec(target.pid, ["sh", "-c", "cat /proc/[0-9]*/stat"])
    states = []
    for line in run.stdout.splitlines():
        match = re.fullmatch(r"(\d+) \((.*)\) (\S) (\d+) .*", line)
        assert match, line
        pid, comm, state, ppid = match.groups()
        # The probe's parent is outside the namespace: it shows as pid 0.
        if ppid != "0" or pid == "1":
            states.append((comm, state))
    return states


# ---- init_path: an init program as PID 1 ------------------------------------


@NEEDS_TINI
def test_init_path_runs_the_init_as_pid_1_and_the_command_as_its_child(box):
    probe = "echo $$ $PPID; tr '\\0' ' ' < /proc/1/cmdline"

    run = box.run(["sh", "-c", probe], init_path=DEFAULT_INIT_PATH)

    own_pid, parent = run.stdout.splitlines()[0].split()
    assert own_pid != "1"
    assert parent == "1"
    assert run.stdout.splitlines()[1] == f"/sbin/corral-init -- sh -c {probe} "
    assert run.exit == ExitStatus(exit_code=0, signal=None)


@NEEDS_TINI
def test_init_is_a_read_only_bind_of_the_host_program(box):
    probe = """
        cmp /sbin/corral-init /proc/1/exe && echo same
        grep ' /sbin/corral-init ' /proc/self/mountinfo | cut -d' ' -f6
        echo > /sbin/corral-init
    """

    run = box.run(["sh", "-c", probe], init_path=DEFAULT_INIT_PATH)

    assert run.stdout.splitlines() == ["same", "ro,nosuid,nodev,relatime"]
    assert "Read-only file system" in run.stderr
    assert (box.upper / "sbin" / "corral-init").stat().st_size == 0


@NEEDS_TINI
def test_sigterm_to_the_init_reaches_a_shell_that_does_not_trap_it(box):
    # Without an init, the shell would be PID 1, and PID 1 ignores a signal
    # it has no handler for.
    target = start_target(
        box, "echo ready; sleep 300 & wait", init_path=DEFAULT_INIT_PATH
    )

    signal.pidfd_send_signal(target.pidfd, signal.SIGTERM)

    assert box.wait(target.pidfd) == ExitStatus(exit_code=143, signal=None)


@pytest.mark.parametrize(
    "init_path, expected",
    [
        pytest.param(DEFAULT_INIT_PATH, ["S"], marks=NEEDS_TINI, id="init"),
        pytest.param(None, ["S", "Z", "Z", "Z"], id="no-init"),
    ],
)
def test_orphans_of_an_exec_are_reaped_only_with_an_init(box, init_path, expected):
    # The probe's shell exits at once: its sleeps go to PID 1 and exit.
    target = start_target(box, init_path=init_path)
    box.exec(target.pid, ["sh", "-c", "sleep 0 & sleep 0 & sleep 0 &"])

    # sleep 300 (PID 1, or the init's child) stays; the orphans are zombies
    # until PID 1 reaps them.
    assert wait_for_sleeps(box, target, expected) == expected


@NEEDS_TINI
def test_missing_command_under_an_init_fails_the_start_as_without(box):
    run = box.run(["no-such-command"], init_path=DEFAULT_INIT_PATH)

    assert run.start.error == (
        'exec: "no-such-command": executable file not found in $PATH'
    )
    assert run.exit == ExitStatus(exit_code=127, signal=None)
