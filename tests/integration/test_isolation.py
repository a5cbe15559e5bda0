"""What a command sees inside a container started by runtime.process.

Each test starts a real container (namespaces, overlayfs, cgroups) from a
busybox rootfs built in a temp dir, runs a small probe as its command and
checks what the probe printed, the start result and the exit status.
"""

import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from rootfs import (
    BUSYBOX,
    CGROUP_ROOT,
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
from runtime.process import SERVER_ENV, ExitStatus, StartResult

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root for namespaces, mounts and cgroups"
    ),
    pytest.mark.skipif(
        not BUSYBOX.exists(), reason=f"needs a static busybox at {BUSYBOX}"
    ),
]


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


def test_pid_1_is_the_command(box):
    run = box.run(["sh", "-c", "echo $$"])

    assert run.stdout == "1\n"
    assert run.start.error is None
    assert run.exit == ExitStatus(exit_code=0, signal=None)


def test_proc_lists_only_the_containers_processes(box):
    run = box.run(["ls", "/proc"])

    assert [name for name in run.stdout.split() if name.isdigit()] == ["1"]


def test_hostname_is_the_containers_and_the_hosts_is_unchanged(box):
    host_name = socket.gethostname()

    run = box.run(["hostname"], hostname="probe-host")

    assert run.stdout == "probe-host\n"
    assert socket.gethostname() == host_name


def test_host_files_outside_the_rootfs_are_invisible(box, tmp_path):
    marker = tmp_path / "host-marker"
    marker.write_text("host only\n")
    probe = f"""
        test -e {marker} && echo marker visible
        test -e /work && echo /work visible
        test -e {box.rootfs} && echo rootfs path visible
        echo done
    """

    run = box.run(["sh", "-c", probe])

    assert run.stdout == "done\n"


@pytest.mark.parametrize("network", ["none", "host"])
def test_sys_is_read_only(box, network):
    probe = """
        grep ' /sys ' /proc/self/mountinfo | cut -d' ' -f6
        cat /sys/class/net/lo/mtu > /sys/class/net/lo/mtu && echo mtu written
    """

    run = box.run(["sh", "-c", probe], network=network)

    assert run.stdout.split(",")[0] == "ro"
    assert "Read-only file system" in run.stderr


USERNS_PROBE = """
import json, sys
from runtime import _sys, process
_sys.set_child_subreaper()
spec = process.InitSpec(**json.loads(sys.argv[1]))
print(process.wait_started(process.spawn_init(spec, 1, 2), 10).error)
"""


def user_namespaces_refused() -> str | None:
    """Why `unshare --user` cannot run here, or None if it can."""
    if shutil.which("unshare") is None:
        return "needs util-linux unshare"
    result = subprocess.run(
        ["unshare", "--user", "true"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        # The kernel refuses a user namespace to a chrooted process, as the
        # tests run in tests/v2's guest.
        return f"needs a user namespace; unshare --user: {result.stderr.strip()}"
    return None


def test_network_host_binds_the_hosts_sys_when_sysfs_is_refused(box, helpers_started):
    # In a user namespace, sysfs refuses a mount for the host's network
    # namespace (owned by the initial one), as for a corrald run inside a
    # container; /dev nodes cannot be created there, so setup stops at /dev,
    # past the /sys step.
    refusal = user_namespaces_refused()
    if refusal is not None:
        pytest.skip(refusal)
    spec = box.spec(["true"], network="host")
    spec_json = json.dumps(dataclasses.asdict(spec))
    probe = [sys.executable, "-c", USERNS_PROBE, spec_json]
    server = "1" if helpers_started == "server" else "0"

    output = subprocess.run(
        ["unshare", "--user", "--map-root-user", *probe],
        cwd=Path(__file__).resolve().parents[2],
        env=os.environ | {SERVER_ENV: server},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )

    assert output.stdout == (
        f"cannot create device node {box.rootfs}/dev/null: operation not permitted\n"
    ), output.stderr


def test_dev_holds_exactly_the_expected_nodes(box):
    probe = """
        ls -A /dev
        stat -c '%n %F %t:%T %a' /dev/null /dev/zero /dev/full /dev/random \
            /dev/urandom /dev/tty
        for link in ptmx fd stdin stdout stderr; do readlink /dev/$link; done
    """

    run = box.run(["sh", "-c", probe])

    lines = run.stdout.splitlines()
    names = "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero"
    assert lines[:13] == names.split()
    assert lines[13:19] == [
        "/dev/null character special file 1:3 666",
        "/dev/zero character special file 1:5 666",
        "/dev/full character special file 1:7 666",
        "/dev/random character special file 1:8 666",
        "/dev/urandom character special file 1:9 666",
        "/dev/tty character special file 5:0 666",
    ]
    assert lines[19:] == [
        "pts/ptmx",
        "/proc/self/fd",
        "/proc/self/fd/0",
        "/proc/self/fd/1",
        "/proc/self/fd/2",
    ]


def test_devpts_is_a_new_instance_that_allocates_terminals(box):
    probe = """
        exec 3<>/dev/ptmx
        ls /dev/pts
        grep ' /dev/shm ' /proc/self/mountinfo | cut -d' ' -f6
    """

    run = box.run(["sh", "-c", probe])

    assert run.stdout.splitlines() == ["0", "ptmx", "rw,nosuid,nodev,noexec,relatime"]


def test_env_is_exactly_the_spec_env(box):
    env = [f"PATH={PATH}", "GREETING=hello world", "EMPTY=", "EQUALS=a=b"]

    run = box.run(["env"], env=env)

    assert run.stdout.splitlines() == env


def test_cwd_is_created_and_used(box):
    run = box.run(["pwd"], cwd="/srv/app/data")

    assert run.stdout == "/srv/app/data\n"
    assert (box.upper / "srv" / "app" / "data").is_dir()


@pytest.mark.parametrize(
    "user, expected",
    [
        ("", "uid=0(root) gid=0(root)"),
        ("nobody", "uid=65534(nobody) gid=65534(nobody)"),
        ("65534:65534", "uid=65534(nobody) gid=65534(nobody)"),
        ("nobody:root", "uid=65534(nobody) gid=0(root)"),
        ("1000", "uid=1000 gid=0(root)"),
        ("1000:1000", "uid=1000 gid=1000"),
    ],
)
def test_user_is_applied(box, user, expected):
    run = box.run(["id"], user=user)

    assert run.stdout == expected + "\n"


@pytest.mark.parametrize(
    "user, expected", [("", "uid=0 gid=0"), ("123:456", "uid=123 gid=456")]
)
def test_numeric_users_need_no_passwd_file(tmp_path, lower, user, expected):
    bare = tmp_path / "bare-layer"
    (bare / "bin").mkdir(parents=True)
    os.link(lower / "bin" / "busybox", bare / "bin" / "busybox")
    (bare / "bin" / "id").symlink_to("busybox")
    box = Container(tmp_path / "container", [bare])
    try:
        run = box.run(["id"], user=user)
    finally:
        box.kill_leftovers()

    assert run.stdout == expected + "\n"


def test_unknown_user_fails_with_a_clear_error(box):
    run = box.run(["id"], user="bob")

    assert run.start.error == (
        "unable to find user bob: no matching entries in passwd file"
    )
    assert run.start.exit_code == 125
    assert run.exit == ExitStatus(exit_code=125, signal=None)
    assert run.stdout == ""


def test_unknown_group_fails_with_a_clear_error(box):
    run = box.run(["id"], user="nobody:staff")

    assert run.start.error == (
        "unable to find group staff: no matching entries in group file"
    )
    assert run.start.exit_code == 125


def test_missing_executable_exits_127_and_names_the_path(box):
    run = box.run(["/does-not-exist"])

    assert run.start.error == (
        'exec: "/does-not-exist": stat /does-not-exist: no such file or directory'
    )
    assert run.start.exit_code == 127
    assert run.exit == ExitStatus(exit_code=127, signal=None)


def test_command_not_in_path_exits_127(box):
    run = box.run(["no-such-command"])

    assert run.start.error == (
        'exec: "no-such-command": executable file not found in $PATH'
    )
    assert run.start.exit_code == 127


def test_non_executable_file_exits_126(box):
    run = box.run(["/etc/passwd"])

    assert run.start.error == 'exec: "/etc/passwd": permission denied'
    assert run.start.exit_code == 126
    assert run.exit == ExitStatus(exit_code=126, signal=None)


def test_network_none_has_only_lo_and_it_is_up(box):
    probe = """
        ls /sys/class/net
        cat /sys/class/net/lo/flags
        tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '
    """

    run = box.run(["sh", "-c", probe], network="none")

    names, flags, dev_names = run.stdout.split("\n", 2)
    assert names == "lo"
    assert int(flags, 16) & 0x1, "IFF_UP is not set on lo"
    assert dev_names.split() == ["lo"]


def test_network_host_sees_the_hosts_interfaces(box):
    run = box.run(
        ["sh", "-c", "readlink /proc/self/ns/net; ls /sys/class/net"], network="host"
    )

    namespace, *interfaces = run.stdout.split()
    assert namespace == os.readlink("/proc/self/ns/net")
    assert interfaces == sorted(os.listdir("/sys/class/net"))


def test_no_daemon_descriptor_leaks_into_the_container(box):
    # An inheritable descriptor of the daemon's, as a careless library leaves.
    stray = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(stray, True)
    try:
        run = box.run(["ls", "-l", "/proc/self/fd"])
    finally:
        os.close(stray)

    lines = run.stdout.splitlines()
    entries = [line.split()[-3:] for line in lines if " -> " in line]
    # busybox ls closes the directory it lists before reading the links.
    assert sorted(fd for fd, _, _ in entries) == ["0", "1", "2"]


def test_signal_mask_and_ignored_signals_are_reset(box):
    # Blocked signals are inherited through fork and exec.
    with signals_blocked_and_ignored():
        run = box.run(["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"])

    assert run.stdout.split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16]


def test_exit_code_is_reported(box):
    run = box.run(["sh", "-c", "exit 3"])

    assert run.exit == ExitStatus(exit_code=3, signal=None)


def test_container_killed_by_its_own_sigkill_exits_137(box):
    # PID 1 ignores signals sent from inside its own pid namespace, so the
    # SIGKILL comes from the kernel: the hard CPU time limit.
    run = box.run(["sh", "-c", "ulimit -t 1; while :; do :; done"])

    assert run.exit == ExitStatus(exit_code=137, signal=signal.SIGKILL)


def test_container_killed_from_the_host_exits_128_plus_signal(box):
    result, pidfd = box.start(box.spec(["sleep", "60"]))

    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    status = box.wait(pidfd)

    assert result.error is None
    assert status == ExitStatus(exit_code=137, signal=signal.SIGKILL)


def test_writes_go_to_the_upper_dir_and_the_lower_layer_is_unchanged(box, lower):
    probe = "echo written > /created && rm /etc/motd && ls /etc"

    run = box.run(["sh", "-c", probe])

    assert run.stdout.split() == ["group", "passwd"]
    assert (box.upper / "created").read_text() == "written\n"
    whiteout = (box.upper / "etc" / "motd").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert (lower / "etc" / "motd").read_text() == "from the image\n"
    assert not (lower / "created").exists()


def test_nothing_is_mounted_on_the_host_during_or_after_the_run(box):
    result, pidfd = box.start(box.spec(["sleep", "60"]))
    during = Path("/proc/self/mountinfo").read_text()
    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    box.wait(pidfd)
    after = Path("/proc/self/mountinfo").read_text()

    assert result.error is None
    assert str(box.base) not in during
    assert str(box.base) not in after


def test_bind_files_appear_in_the_container(box, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost probe\n")
    bind_files = {"/etc/hosts": str(hosts), "/etc/net/resolv.conf": str(hosts)}

    run = box.run(
        ["sh", "-c", "cat /etc/hosts /etc/net/resolv.conf"], bind_files=bind_files
    )

    assert run.stdout == 2 * "127.0.0.1 localhost probe\n"


def test_image_symlink_cannot_redirect_a_bind_file_to_the_host(tmp_path, lower):
    # The image points /etc/hostname at a host path that does not exist; its
    # directory exists both on the host and in the image.
    escape = Path(f"/tmp/corral-escape-{secrets.token_hex(8)}")
    evil = tmp_path / "evil-layer"
    (evil / "etc").mkdir(parents=True)
    (evil / "etc" / "hostname").symlink_to(escape)
    hostname_file = tmp_path / "hostname"
    hostname_file.write_text("probe\n")
    box = Container(tmp_path / "container", [evil, lower])
    try:
        run = box.run(
            ["cat", "/etc/hostname"], bind_files={"/etc/hostname": str(hostname_file)}
        )
    finally:
        box.kill_leftovers()

    escaped = escape.exists()
    escape.unlink(missing_ok=True)
    assert run.stdout == "probe\n"
    assert not escaped
    assert (box.upper / escape.relative_to("/")).exists()


def test_image_symlink_in_place_of_proc_is_refused(tmp_path, lower):
    evil = tmp_path / "evil-layer"
    evil.mkdir()
    (evil / "proc").symlink_to(tmp_path)
    box = Container(tmp_path / "container", [evil, lower])
    try:
        run = box.run(["true"])
    finally:
        box.kill_leftovers()

    assert run.start.error == (
        f"cannot mount on {box.rootfs}/proc: the image has a non-directory there"
    )
    assert run.start.exit_code == 125


def test_many_layers_beyond_one_page_of_mount_options_still_mount(tmp_path, lower):
    layers = []
    for index in range(36):
        layer = tmp_path / f"{index:02d}{secrets.token_hex(31)}"
        layer.mkdir()
        layers.append(layer)
    (layers[0] / "top").write_text("top layer\n")
    assert len(":".join(map(str, layers))) > 4096
    box = Container(tmp_path / "container", [*layers, lower])
    try:
        run = box.run(["cat", "/top"])
    finally:
        box.kill_leftovers()

    assert run.stdout == "top layer\n"


def test_cgroup_join_failure_is_reported_before_pid_1_exists(box):
    result, pidfd = box.start(
        box.spec(["true"], cgroup_procs=["/sys/fs/cgroup/no-such-cgroup/cgroup.procs"])
    )

    assert pidfd is None
    assert result == StartResult(
        pid=None,
        error=(
            "cannot join cgroup /sys/fs/cgroup/no-such-cgroup/cgroup.procs: "
            "no such file or directory"
        ),
        exit_code=125,
    )


@pytest.fixture
def owned_cgroups():
    """c1 under a test-owned parent in the v1 memory and the unified tree.

    Request it before box: fixtures are torn down in reverse, and a cgroup
    can only be removed once the container is gone.
    """
    hierarchies = [CGROUP_ROOT / "memory", CGROUP_ROOT / "unified"]
    missing = [str(path) for path in hierarchies if not path.is_dir()]
    if missing:
        pytest.skip(f"needs a hybrid cgroup layout; missing {', '.join(missing)}")
    parent = f"corral-test-{secrets.token_hex(4)}"
    leaves = [path / parent / "c1" for path in hierarchies]
    for leaf in leaves:
        leaf.mkdir(parents=True)
    yield leaves
    for leaf in leaves:
        remove_cgroup(leaf)
        remove_cgroup(leaf.parent)


def test_cgroup_namespace_roots_the_containers_cgroups_on_hybrid(owned_cgroups, box):
    memory, unified = owned_cgroups
    probe = """
        grep -E '^[0-9]+:(memory)?:' /proc/self/cgroup
        echo --
        ls /sys/fs/cgroup
        echo --
        cat /sys/fs/cgroup/memory/cgroup.procs
        echo --
        mkdir /sys/fs/cgroup/memory/sub /sys/fs/cgroup/unified/sub \\
            /sys/fs/cgroup/new 2>&1
        echo --
        grep ' /sys/fs/cgroup' /proc/self/mountinfo | cut -d' ' -f4,5,6,8
        echo --
        exec sleep 60
    """
    spec = box.spec(
        ["sh", "-c", probe],
        cgroup_procs=[str(memory / "cgroup.procs"), str(unified / "cgroup.procs")],
        cgroup_mounts=[("cgroup", "memory"), ("cgroup2", "unified")],
    )
    result, pidfd = box.start(spec)
    output = wait_for_output(box.base / "stdout", "--\n", count=5)
    host_procs = [(leaf / "cgroup.procs").read_text().split() for leaf in owned_cgroups]
    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    box.wait(pidfd)

    groups, listing, procs, mkdir, mounts, _ = output.split("--\n")
    assert sorted(groups.split()) == ["0::/", f"{memory_id()}:memory:/"]
    assert host_procs == [[str(result.pid)], [str(result.pid)]]
    assert listing.split() == ["memory", "unified"]
    # Only the container's sh and cat are in its memory cgroup.
    assert len(procs.split()) == 2 and "1" in procs.split()
    assert mkdir.count("Read-only file system") == 3
    assert mounts.splitlines() == [
        "/ /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime tmpfs",
        "/ /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime cgroup",
        "/ /sys/fs/cgroup/unified ro,nosuid,nodev,noexec,relatime cgroup2",
    ]


@pytest.fixture
def unified_cgroup():
    """c1 under a test-owned parent in the cgroup2 tree: the unified one on
    hybrid hosts, the only one on pure v2 hosts. Request it before box."""
    try:
        leaves, _ = make_cgroups(unique_cgroup_parent())
    except LookupError as err:
        pytest.skip(str(err))
    yield leaves[-1]
    for leaf in leaves:
        remove_cgroup(leaf)
        remove_cgroup(leaf.parent)


def test_cgroup2_alone_is_mounted_at_sys_fs_cgroup(unified_cgroup, box):
    unified = unified_cgroup
    probe = """
        grep '^0::' /proc/self/cgroup
        echo --
        cat /sys/fs/cgroup/cgroup.procs
        echo --
        grep ' /sys/fs/cgroup ' /proc/self/mountinfo | cut -d' ' -f4,5,6,8
        mkdir /sys/fs/cgroup/sub 2>&1
    """

    run = box.run(
        ["sh", "-c", probe],
        cgroup_procs=[str(unified / "cgroup.procs")],
        cgroup_mounts=[("cgroup2", "")],
    )

    group, procs, rest = run.stdout.split("--\n")
    assert group == "0::/\n"
    assert len(procs.split()) == 2 and "1" in procs.split()
    mount, mkdir = rest.splitlines()
    assert mount == "/ /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime cgroup2"
    assert "Read-only file system" in mkdir


def memory_id() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, _ = line.split(":", 2)
        if controllers == "memory":
            return number
    raise AssertionError("no memory hierarchy in /proc/self/cgroup")
