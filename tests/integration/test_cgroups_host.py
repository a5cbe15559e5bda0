"""runtime.cgroups on the real kernel, whatever layout this host has.

Needs root. Every test works under its own parent cgroup,
corral-test-<random>, and removes only the cgroups it created. Processes
are started with subprocess as `sh -c 'echo $$ > cgroup.procs...; exec CMD'`
so they are inside the cgroup before CMD runs; only those are ever killed.
tests/v2/run.sh runs this file in a pure cgroup v2 guest as well.
"""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime import cgroups
from runtime.cgroups import CgroupError, CgroupManager, Layout, Limits

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups"),
]

MiB = 1 << 20
# The cgroup2 guest runs under software emulation, about 10x slower.
WAIT_S = 60.0


def host_layout() -> Layout:
    """The layout told apart by files, independently of mountinfo parsing."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return Layout.V2
    if Path("/sys/fs/cgroup/unified/cgroup.procs").exists():
        return Layout.HYBRID
    return Layout.V1


@pytest.fixture
def make_manager():
    """CgroupManagers under fresh parents, cleaned up afterwards."""
    made: list[tuple[CgroupManager, list[Path]]] = []

    def make(**kwargs) -> CgroupManager:
        parent = kwargs.pop("parent", f"corral-test-{secrets.token_hex(4)}")
        manager = CgroupManager(parent=parent, **kwargs)
        new = [p for p in manager.parent_dirs().all() if not p.exists()]
        made.append((manager, new))
        return manager

    yield make
    for manager, new in made:
        for name in manager.names():
            cgroup = manager.open(name)
            cgroup.kill()
            cgroup.remove()
        for path in new:
            if path.exists():
                path.rmdir()


@pytest.fixture
def manager(make_manager):
    manager = make_manager()
    manager.setup()
    return manager


def spawn_in(cgroup, *argv, **popen_kwargs) -> subprocess.Popen:
    """Start argv inside the cgroup: the shell joins, then execs argv."""
    script = 'for f in $PROCS; do echo $$ > "$f" || exit 125; done; exec "$@"'
    env = dict(os.environ, PROCS=" ".join(map(str, cgroup.procs_files())))
    process = subprocess.Popen(
        ["sh", "-c", script, "sh", *argv], env=env, **popen_kwargs
    )
    # Once it runs argv, the shell has joined every cgroup, not only the first.
    wait_until(lambda: _cmdline(process.pid) == list(argv) or process.poll() is not None)
    assert process.poll() is None, f"{argv} did not start in the cgroup"
    return process


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except FileNotFoundError:
        return []


def wait_until(condition, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def read(folder: Path, name: str) -> str:
    return (folder / name).read_text().strip()


def test_the_detected_layout_matches_the_host(manager):
    assert manager.layout is host_layout()
    assert cgroups.detect_layout() is host_layout()


def test_limits_read_back_from_the_kernel_files(manager):
    limits = Limits(
        memory_bytes=64 * MiB, cpu_quota_us=50000, cpu_period_us=100000, pids_max=20
    )
    dirs = manager.create("limits", limits).dirs
    memory, cpu = dirs.path("memory"), dirs.path("cpu")
    if manager.layout is Layout.V2:
        assert read(memory, "memory.max") == str(64 * MiB)
        assert read(cpu, "cpu.max") == "50000 100000"
        if manager.swap_accounting:
            assert read(memory, "memory.swap.max") == str(64 * MiB)
    else:
        assert read(memory, "memory.limit_in_bytes") == str(64 * MiB)
        assert read(cpu, "cpu.cfs_quota_us") == "50000"
        assert read(cpu, "cpu.cfs_period_us") == "100000"
        if manager.swap_accounting:
            assert read(memory, "memory.memsw.limit_in_bytes") == str(128 * MiB)
    assert read(dirs.path("pids"), "pids.max") == "20"


def test_raising_the_memory_limit_above_the_old_swap_total_works(manager):
    cgroup = manager.create("grow", Limits(memory_bytes=32 * MiB))
    cgroup.set_limits(Limits(memory_bytes=256 * MiB, pids_max=-1))
    memory = cgroup.dirs.path("memory")
    if manager.layout is Layout.V2:
        assert read(memory, "memory.max") == str(256 * MiB)
    else:
        assert read(memory, "memory.limit_in_bytes") == str(256 * MiB)
        if manager.swap_accounting:
            assert read(memory, "memory.memsw.limit_in_bytes") == str(512 * MiB)
    assert read(cgroup.dirs.path("pids"), "pids.max") == "max"


def test_a_process_joins_every_hierarchy_and_kill_empties_the_cgroup(manager):
    cgroup = manager.create("sleeper", Limits())
    sleeper = spawn_in(cgroup, "sleep", "300")
    assert cgroup.pids() == [sleeper.pid]
    expected = f"/{manager.parent}/sleeper"
    lines = Path(f"/proc/{sleeper.pid}/cgroup").read_text().splitlines()
    joined = {line.split(":", 2)[1] for line in lines if line.endswith(expected)}
    wanted = {options for options in cgroup.dirs.v1}
    if cgroup.dirs.unified is not None:
        wanted.add("")
    assert joined >= wanted
    cgroup.kill()
    assert sleeper.wait(timeout=WAIT_S) == -9
    assert cgroup.pids() == []
    cgroup.remove()
    assert not any(path.exists() for path in cgroup.dirs.all())
    assert manager.names() == []


def test_removing_a_cgroup_with_a_process_in_it_says_so(manager):
    cgroup = manager.create("busy", Limits())
    sleeper = spawn_in(cgroup, "sleep", "300")
    with pytest.raises(CgroupError) as caught:
        cgroup.remove()
    assert str(caught.value) == (
        f"cannot remove the cgroup of container busy: processes {sleeper.pid} "
        "are still in it; kill the container first, then retry"
    )
    cgroup.kill()
    sleeper.wait(timeout=WAIT_S)
    cgroup.remove()


def test_a_memory_hog_in_a_32_mib_cgroup_is_oom_killed(manager):
    swap_bytes = 32 * MiB if manager.swap_accounting else None
    limits = Limits(memory_bytes=32 * MiB, memory_swap_bytes=swap_bytes)
    cgroup = manager.create("hog", limits)
    hog = spawn_in(cgroup, sys.executable, "-c", "x = b'x' * (256 << 20)")
    assert hog.wait(timeout=WAIT_S) == -9
    assert cgroups.memory_events(cgroup.dirs)["oom_kill"] >= 1
    assert cgroups.memory_usage_bytes(cgroup.dirs) <= 32 * MiB


FORK_LOOP = """
import os, time
forked = failed = 0
for _ in range(30):
    try:
        pid = os.fork()
    except BlockingIOError:
        failed += 1
        continue
    if pid == 0:
        time.sleep(300)
        os._exit(0)
    forked += 1
print(f"forked={forked} failed={failed}", flush=True)
time.sleep(300)
"""


def test_a_pids_limit_of_10_stops_a_fork_loop(manager):
    cgroup = manager.create("forks", Limits(pids_max=10))
    loop = spawn_in(
        cgroup, sys.executable, "-c", FORK_LOOP, stdout=subprocess.PIPE, text=True
    )
    assert loop.stdout.readline().strip() == "forked=9 failed=21"
    assert cgroups.pids_current(cgroup.dirs) == 10
    assert len(cgroup.pids()) == 10
    cgroup.kill()
    assert loop.wait(timeout=WAIT_S) == -9
    loop.stdout.close()
    assert cgroup.pids() == []


def test_read_helpers_work_on_the_live_cgroup(manager):
    limits = Limits(cpu_quota_us=50000, cpu_period_us=100000)
    cgroup = manager.create("reader", limits)
    busy = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 300"
    spawn_in(cgroup, "sh", "-c", busy)
    dirs = cgroup.dirs
    wait_until(lambda: cgroups.cpu_usage_ns(dirs) > 10_000_000)
    assert cgroups.memory_usage_bytes(dirs) > 0
    assert cgroups.pids_current(dirs) == 1
    assert cgroups.memory_stat(dirs)
    assert "oom_kill" in cgroups.memory_events(dirs)
    assert {"nr_periods", "nr_throttled", "throttled_usec"} <= set(
        cgroups.cpu_stat(dirs)
    )
    cgroup.kill()
    cgroup.remove()
    with pytest.raises(FileNotFoundError):
        cgroups.memory_usage_bytes(dirs)


def test_without_cgroup_kill_every_member_is_signalled_until_none_is_left(
    make_manager, tmp_path
):
    if host_layout() is Layout.V2:
        pytest.skip("needs v1 hierarchies; this host is pure cgroup v2")
    # The host's mount table without its cgroup2 mount: a real pure v1 view.
    mounts = Path("/proc/self/mountinfo").read_text().splitlines(keepends=True)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("".join(m for m in mounts if " - cgroup2 " not in m))
    manager = make_manager(mountinfo=mountinfo)
    assert manager.layout is Layout.V1
    cgroup = manager.create("forker", Limits())
    shell = spawn_in(cgroup, "sh", "-c", "sleep 300 & sleep 300 & wait")
    wait_until(lambda: len(cgroup.pids()) == 3)
    cgroup.kill()
    assert cgroup.pids() == []
    assert shell.wait(timeout=WAIT_S) == -9
    cgroup.remove()


def test_setup_refuses_a_parent_without_delegated_controllers(make_manager):
    if host_layout() is not Layout.V2:
        pytest.skip("controller delegation exists only on pure cgroup v2")
    outer = Path(f"/sys/fs/cgroup/corral-test-{secrets.token_hex(4)}")
    outer.mkdir()  # created here, with nothing enabled for its children
    try:
        manager = make_manager(parent=f"{outer.name}/inner")
        with pytest.raises(CgroupError) as caught:
            manager.setup()
        assert "controller(s) are not delegated to it" in str(caught.value)
        assert f"{outer}/cgroup.subtree_control" in str(caught.value)
        assert not (outer / "inner").exists()
    finally:
        outer.rmdir()
