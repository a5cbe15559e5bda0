"""runtime.cgroups against fake cgroup trees under tmp_path.

Each host layout is a fake mountinfo file plus a directory tree. FakeKernel
stands in for cgroupfs: mkdir fills a new cgroup with the interface files
the real kernel would show, and writes and rmdir obey the kernel rules the
module depends on (memsw >= limit, subtree_control only for available
controllers, no rmdir while processes remain, cpuset needs cpus and mems).
"""

import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from runtime import cgroups
from runtime.cgroups import CgroupError, CgroupManager, Layout, Limits

MiB = 1 << 20
UNLIMITED_V1 = "9223372036854771712"

HYBRID_MOUNTS = """\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / {root} rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / {root}/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / {root}/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / {root}/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / {root}/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / {root}/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / {root}/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / {root}/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / {root}/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / {root}/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / {root}/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""

# A Debian-style v1 host: cpu and cpuacct share one hierarchy, mounted at
# "cpu,cpuacct" with symlinks "cpu" and "cpuacct" pointing at it.
V1_COMBINED_MOUNTS = """\
31 23 0:28 / {root} ro,nosuid - tmpfs tmpfs ro,mode=755
32 31 0:29 / {root}/systemd rw - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
33 31 0:30 / {root}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / {root}/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio
35 31 0:32 / {root}/memory rw - cgroup cgroup rw,memory
36 31 0:33 / {root}/pids rw - cgroup cgroup rw,pids
37 31 0:34 / {root}/cpuset rw - cgroup cgroup rw,cpuset,clone_children
"""

V2_MOUNTS = """\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
35 22 0:30 / {root} rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate
"""


class FakeKernel(cgroups.Cgroupfs):
    """cgroupfs rules on a plain directory tree, recording every write."""

    def __init__(self, trees: dict[Path, str], swap_accounting: bool = True):
        self.trees = trees  # mount point -> "v2", "unified" or v1 options
        self.swap_accounting = swap_accounting
        self.writes: list[tuple[Path, str]] = []
        self.denied: set[str] = set()

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)
        self.populate(path)

    def rmdir(self, path: Path) -> None:
        if not path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such cgroup", str(path))
        busy = (path / "cgroup.procs").read_text().strip()
        if busy or any(p.is_dir() for p in path.iterdir()):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        shutil.rmtree(path)

    def write(self, path: Path, value: str) -> None:
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
        if path.name in self.denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        self.check(path, value)
        self.writes.append((path, value))
        self.store(path, value)

    def written(self, name: str) -> list[str]:
        return [value for path, value in self.writes if path.name == name]

    def populate(self, path: Path, root_cgroup: bool = False) -> None:
        _, kind = self.tree_of(path)
        files = {"cgroup.procs": ""}
        if kind in ("v2", "unified"):
            files |= self.v2_core_files(path, kind, root_cgroup)
        else:
            for controller in kind.split(","):
                files |= self.v1_files(controller, root_cgroup)
        for name, text in files.items():
            (path / name).write_text(text)

    def tree_of(self, path: Path) -> tuple[Path, str]:
        for mount, kind in self.trees.items():
            if path == mount or mount in path.parents:
                return mount, kind
        raise AssertionError(f"{path} is in no fake cgroup tree")

    def v2_core_files(self, path: Path, kind: str, root_cgroup: bool) -> dict:
        files = {"cgroup.subtree_control": "", "cpu.stat": "usage_usec 0\n"}
        for resource in ("cpu", "memory", "io"):
            files[f"{resource}.pressure"] = "some avg10=0.00 total=0\n"
        if root_cgroup:
            return files | {"cgroup.controllers": self.root_controllers(kind)}
        files |= {"cgroup.events": "populated 0\nfrozen 0\n", "cgroup.kill": ""}
        enabled = (path.parent / "cgroup.subtree_control").read_text().split()
        files["cgroup.controllers"] = " ".join(enabled)
        for controller in enabled:
            files |= self.v2_controller_files(controller)
        return files

    def show_controllers(self, folder: Path, enabled: list[str]) -> None:
        # Like the kernel: a child sees what its parent enabled, at once.
        (folder / "cgroup.controllers").write_text(" ".join(enabled))
        for controller in enabled:
            for name, text in self.v2_controller_files(controller).items():
                if not (folder / name).exists():
                    (folder / name).write_text(text)

    def root_controllers(self, kind: str) -> str:
        return "cpuset cpu io memory pids" if kind == "v2" else ""

    def v2_controller_files(self, controller: str) -> dict:
        files = {
            "memory": {
                "memory.max": "max",
                "memory.current": "0",
                "memory.stat": "anon 0\nfile 0\n",
                "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
            },
            "cpu": {"cpu.max": "max 100000"},
            "pids": {"pids.max": "max", "pids.current": "0"},
            "io": {"io.max": ""},
        }.get(controller, {})
        if controller == "memory" and self.swap_accounting:
            files = files | {"memory.swap.max": "max"}
        return files

    def v1_files(self, controller: str, root_cgroup: bool) -> dict:
        files = {
            "memory": {
                "memory.limit_in_bytes": UNLIMITED_V1,
                "memory.usage_in_bytes": "0",
                "memory.stat": "cache 0\nrss 0\n",
                "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                "memory.failcnt": "0",
            },
            "cpu": {
                "cpu.cfs_period_us": "100000",
                "cpu.cfs_quota_us": "-1",
                "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
            },
            "cpuacct": {"cpuacct.usage": "0"},
            "pids": {"pids.max": "max", "pids.current": "0"},
            "cpuset": {
                "cpuset.cpus": "0-3" if root_cgroup else "",
                "cpuset.mems": "0" if root_cgroup else "",
            },
            "freezer": {"freezer.state": "THAWED"},
        }.get(controller, {})
        if controller == "memory" and self.swap_accounting:
            files = files | {"memory.memsw.limit_in_bytes": UNLIMITED_V1}
        return files

    def check(self, path: Path, value: str) -> None:
        name, folder = path.name, path.parent
        if name == "cgroup.subtree_control":
            available = (folder / "cgroup.controllers").read_text().split()
            if any(word[1:] not in available for word in value.split()):
                raise OSError(errno.ENOENT, "controller not available")
            if (folder / "cgroup.procs").read_text().strip():
                raise OSError(errno.EBUSY, "cgroup has processes")
        if name == "memory.limit_in_bytes":
            memsw = folder / "memory.memsw.limit_in_bytes"
            if memsw.exists() and int(value) > int(memsw.read_text()):
                raise OSError(errno.EINVAL, "memsw below limit")
        if name == "memory.memsw.limit_in_bytes":
            limit = int((folder / "memory.limit_in_bytes").read_text())
            if _v1_int(value) < limit:
                raise OSError(errno.EINVAL, "memsw below limit")
        if name in ("cpu.max", "cpu.cfs_quota_us"):
            quota = value.split()[0]
            if quota not in ("max", "-1") and int(quota) < 1000:
                raise OSError(errno.EINVAL, "quota below 1ms")
        cpus = folder / "cpuset.cpus"
        if name == "cgroup.procs" and cpus.exists() and not cpus.read_text().strip():
            raise OSError(errno.ENOSPC, "empty cpuset")

    def store(self, path: Path, value: str) -> None:
        if path.name == "cgroup.subtree_control":
            enabled = path.read_text().split() + [w[1:] for w in value.split()]
            path.write_text(" ".join(dict.fromkeys(enabled)))
            for child in (p for p in path.parent.iterdir() if p.is_dir()):
                self.show_controllers(child, enabled)
        elif path.name == "cgroup.kill":
            self.kill_everything_at(path.parent)
        elif path.name == "memory.memsw.limit_in_bytes":
            path.write_text(str(_v1_int(value)))
        else:
            path.write_text(value)

    def kill_everything_at(self, folder: Path) -> None:
        mount, _ = self.tree_of(folder)
        relative = folder.relative_to(mount)
        for other in self.trees:
            procs = other / relative / "cgroup.procs"
            if procs.exists():
                procs.write_text("")


def _v1_int(value: str) -> int:
    return int(UNLIMITED_V1) if value == "-1" else int(value)


class Host:
    """A fake host: mountinfo, the cgroup trees, a FakeKernel."""

    def __init__(self, tmp_path: Path, template: str, swap_accounting=True):
        self.root = tmp_path / "cgroup"
        self.root.mkdir()
        self.mountinfo = tmp_path / "mountinfo"
        self.mountinfo.write_text(template.format(root=self.root))
        mounts = cgroups.read_mounts(self.root, self.mountinfo)
        trees = {h.mount_point: h.options for h in mounts.v1}
        if mounts.unified is not None:
            kind = "v2" if mounts.unified == self.root else "unified"
            trees[mounts.unified] = kind
        self.kernel = FakeKernel(trees, swap_accounting)
        for mount in trees:
            mount.mkdir(exist_ok=True)
            self.kernel.populate(mount, root_cgroup=True)
        if mounts.unified == self.root:
            (self.root / "cgroup.subtree_control").write_text("cpu io memory pids")

    def manager(self, parent: str = "corral") -> CgroupManager:
        return CgroupManager(self.root, parent, self.mountinfo, fs=self.kernel)

    def snapshot(self) -> dict[str, str]:
        return {
            str(p.relative_to(self.root)): p.read_text()
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }


@pytest.fixture
def hybrid(tmp_path):
    return Host(tmp_path, HYBRID_MOUNTS)


@pytest.fixture
def v1(tmp_path):
    return Host(tmp_path, V1_COMBINED_MOUNTS)


@pytest.fixture
def v2(tmp_path):
    return Host(tmp_path, V2_MOUNTS)


@pytest.fixture(params=["v2", "hybrid", "v1"])
def host(request, tmp_path):
    template = {"v2": V2_MOUNTS, "hybrid": HYBRID_MOUNTS, "v1": V1_COMBINED_MOUNTS}
    return Host(tmp_path, template[request.param])


# -- detection ----------------------------------------------------------------


def test_detects_pure_v2_from_a_cgroup2_mount_at_the_root(v2):
    assert cgroups.detect_layout(v2.root, v2.mountinfo) is Layout.V2
    assert v2.manager().mounts.v1 == ()


def test_detects_hybrid_with_separate_cpu_and_cpuacct_mounts(hybrid):
    mounts = cgroups.read_mounts(hybrid.root, hybrid.mountinfo)
    assert mounts.layout is Layout.HYBRID
    assert mounts.unified == hybrid.root / "unified"
    assert [h.options for h in mounts.v1] == [
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
    ]


def test_detects_pure_v1_and_reads_a_combined_cpu_cpuacct_hierarchy(v1):
    os.symlink("cpu,cpuacct", v1.root / "cpu")
    os.symlink("cpu,cpuacct", v1.root / "cpuacct")
    mounts = cgroups.read_mounts(v1.root, v1.mountinfo)
    assert mounts.layout is Layout.V1
    assert mounts.unified is None
    combined = [h for h in mounts.v1 if "cpu" in h.controllers]
    assert combined == [
        cgroups.Hierarchy(("cpu", "cpuacct"), "cpu,cpuacct", v1.root / "cpu,cpuacct")
    ]


def test_named_hierarchies_and_unneeded_controllers_are_skipped(v1):
    options = [h.options for h in v1.manager().mounts.v1]
    assert options == ["cpu,cpuacct", "memory", "pids", "cpuset"]


def test_cgroup_mounts_outside_the_root_are_ignored(tmp_path):
    host = Host(
        tmp_path, V2_MOUNTS + "50 1 0:40 / /elsewhere rw - cgroup cgroup rw,memory\n"
    )
    assert host.manager().mounts.v1 == ()


def test_a_later_mount_hides_the_cgroup_mounts_below_it(tmp_path):
    earlier = "30 23 0:27 / {root} rw - cgroup2 cgroup2 rw\n"
    host = Host(tmp_path, earlier + HYBRID_MOUNTS)
    assert host.manager().layout is Layout.HYBRID


def test_escaped_spaces_in_mount_points_are_decoded(tmp_path):
    root = tmp_path / "with space"
    root.mkdir()
    mountinfo = tmp_path / "mountinfo"
    escaped = str(root).replace(" ", "\\040")
    mountinfo.write_text(f"35 22 0:30 / {escaped} rw - cgroup2 cgroup2 rw\n")
    assert cgroups.read_mounts(root, mountinfo).unified == root


def test_no_cgroup_mounts_is_an_error_that_says_what_to_do(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 0:21 / /sys rw - sysfs sysfs rw\n")
    with pytest.raises(
        CgroupError, match="no usable cgroup mounts under .*mount cgroupfs"
    ):
        cgroups.detect_layout(tmp_path, mountinfo)


# -- where a container lives --------------------------------------------------


def test_hybrid_container_joins_every_v1_hierarchy_and_the_unified_tree(hybrid):
    cgroup = hybrid.manager().open("web")
    names = [
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
    ]
    expected = [hybrid.root / n / "corral/web/cgroup.procs" for n in names]
    assert cgroup.procs_files() == expected + [
        hybrid.root / "unified/corral/web/cgroup.procs"
    ]
    assert cgroup.mounts_in_container() == [("cgroup", n) for n in names] + [
        ("cgroup2", "unified")
    ]


def test_v1_container_mounts_the_combined_hierarchy_by_its_options(v1):
    cgroup = v1.manager().open("web")
    assert cgroup.mounts_in_container() == [
        ("cgroup", "cpu,cpuacct"),
        ("cgroup", "memory"),
        ("cgroup", "pids"),
        ("cgroup", "cpuset"),
    ]
    assert v1.root / "cpu,cpuacct/corral/web/cgroup.procs" in cgroup.procs_files()
    assert cgroup.dirs.path("cpuacct") == v1.root / "cpu,cpuacct/corral/web"


def test_v2_container_has_one_procs_file_and_mounts_cgroup2(v2):
    cgroup = v2.manager().open("web")
    assert cgroup.procs_files() == [v2.root / "corral/web/cgroup.procs"]
    assert cgroup.mounts_in_container() == [("cgroup2", "")]


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x\0y"])
def test_names_that_are_not_one_path_component_are_refused(v2, name):
    with pytest.raises(CgroupError, match="invalid container cgroup name"):
        v2.manager().open(name)


@pytest.mark.parametrize("parent", ["", "/abs", "a/../b"])
def test_parents_outside_the_root_are_refused(v2, parent):
    with pytest.raises(CgroupError, match="invalid cgroup parent"):
        v2.manager(parent)


# -- setup --------------------------------------------------------------------


def test_v2_setup_enables_only_the_controllers_the_parent_lists(v2):
    (v2.root / "cgroup.subtree_control").write_text("cpu memory pids")
    manager = v2.manager()
    manager.setup()
    assert v2.kernel.writes == [
        (v2.root / "corral/cgroup.subtree_control", "+memory +cpu +pids")
    ]
    assert manager.swap_accounting


def test_v2_setup_enables_io_when_it_is_delegated(v2):
    v2.manager().setup()
    assert v2.kernel.written("cgroup.subtree_control") == ["+memory +cpu +pids +io"]


def test_v2_setup_writes_nothing_when_controllers_are_already_enabled(v2):
    v2.manager().setup()
    v2.kernel.writes.clear()
    v2.manager().setup()
    assert v2.kernel.writes == []


def test_v2_setup_enables_controllers_at_every_level_it_creates(v2):
    v2.manager("corral/containers").setup()
    assert v2.kernel.writes == [
        (v2.root / "corral/cgroup.subtree_control", "+memory +cpu +pids +io"),
        (
            v2.root / "corral/containers/cgroup.subtree_control",
            "+memory +cpu +pids +io",
        ),
    ]


def test_v2_setup_refuses_a_parent_without_pids_delegated(v2):
    (v2.root / "cgroup.subtree_control").write_text("cpu io memory")
    with pytest.raises(CgroupError) as caught:
        v2.manager().setup()
    message = str(caught.value)
    assert "the pids controller(s) are not delegated to it" in message
    assert f"echo '+pids' > {v2.root}/cgroup.subtree_control" in message
    assert "Delegate=yes" in message
    assert not (v2.root / "corral").exists()


def test_v2_setup_explains_a_parent_that_holds_processes(v2):
    v2.kernel.mkdir(v2.root / "corral")
    (v2.root / "corral/cgroup.procs").write_text("4242\n")
    with pytest.raises(
        CgroupError, match="writing .*subtree_control failed .*holds processes"
    ):
        v2.manager().setup()
    assert (v2.root / "corral").is_dir()  # it was not ours to remove


def test_v1_cpuset_parent_and_container_get_cpus_and_mems_from_above(v1):
    v1.manager().create("web", Limits())
    for level in ("cpuset/corral", "cpuset/corral/web"):
        assert (v1.root / level / "cpuset.cpus").read_text() == "0-3"
        assert (v1.root / level / "cpuset.mems").read_text() == "0"
    v1.kernel.write(v1.root / "cpuset/corral/web/cgroup.procs", "1")


def test_setup_and_create_write_only_inside_cgroups_they_created(host):
    before = host.snapshot()
    host.manager().create("web", Limits(memory_bytes=64 * MiB, pids_max=5))
    after = host.snapshot()
    changed = [name for name in before if before[name] != after[name]]
    assert changed == []
    written = [path.relative_to(host.root).parts for path, _ in host.kernel.writes]
    assert written and all("corral" in parts for parts in written)


def test_setup_reports_a_parent_it_may_not_create(hybrid):
    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    hybrid.kernel.mkdir = refuse
    with pytest.raises(CgroupError) as caught:
        hybrid.manager().setup()
    assert str(caught.value) == (
        f"cannot create corral's parent cgroup {hybrid.root}/cpu/corral: mkdir "
        "failed (permission denied); run corrald as root or delegate its "
        "cgroup subtree"
    )


# -- limits -------------------------------------------------------------------


@pytest.mark.parametrize("host", ["hybrid", "v1"], indirect=True)
def test_v1_limits_go_to_the_v1_files(host):
    limits = Limits(
        memory_bytes=64 * MiB,
        cpu_quota_us=50000,
        cpu_period_us=100000,
        pids_max=20,
    )
    cgroup = host.manager().create("web", limits)
    memory = cgroup.dirs.path("memory")
    assert (memory / "memory.limit_in_bytes").read_text() == str(64 * MiB)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(128 * MiB)
    cpu = cgroup.dirs.path("cpu")
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (cgroup.dirs.path("pids") / "pids.max").read_text() == "20"


def test_hybrid_limits_leave_the_unified_tree_alone(hybrid):
    hybrid.manager().create("web", Limits(memory_bytes=64 * MiB, pids_max=3))
    assert not [p for p, _ in hybrid.kernel.writes if "unified" in str(p)]


def test_v2_limits_go_to_memory_max_swap_max_cpu_max_and_pids_max(v2):
    limits = Limits(
        memory_bytes=64 * MiB,
        memory_swap_bytes=96 * MiB,
        cpu_quota_us=50000,
        cpu_period_us=100000,
        pids_max=20,
    )
    cgroup = v2.manager().create("web", limits)
    folder = cgroup.dirs.unified
    assert (folder / "memory.max").read_text() == str(64 * MiB)
    assert (folder / "memory.swap.max").read_text() == str(32 * MiB)
    assert (folder / "cpu.max").read_text() == "50000 100000"
    assert (folder / "pids.max").read_text() == "20"


@pytest.mark.parametrize(
    "memory, swap, total",
    [
        (None, None, None),
        (0, None, None),
        (None, -1, None),
        (64 * MiB, None, 128 * MiB),
        (64 * MiB, 0, 128 * MiB),
        (64 * MiB, -1, -1),
        (64 * MiB, 64 * MiB, 64 * MiB),
        (64 * MiB, 100 * MiB, 100 * MiB),
        (-1, None, -1),
    ],
)
def test_swap_total_follows_docker(memory, swap, total):
    assert cgroups.swap_total_bytes(memory, swap) == total


def test_swap_below_memory_is_refused():
    with pytest.raises(CgroupError) as caught:
        cgroups.swap_total_bytes(64 * MiB, 32 * MiB)
    assert str(caught.value) == (
        "memory+swap limit 32M is lower than the memory limit 64M; set it to "
        "at least the memory limit, or -1 for unlimited swap"
    )


def test_swap_limit_without_memory_limit_is_refused():
    with pytest.raises(CgroupError, match="needs a memory limit"):
        cgroups.swap_total_bytes(None, 64 * MiB)


@pytest.mark.parametrize(
    "swap, expected", [(None, str(64 * MiB)), (-1, "max"), (64 * MiB, "0")]
)
def test_v2_swap_max_is_the_total_minus_memory(v2, swap, expected):
    limits = Limits(memory_bytes=64 * MiB, memory_swap_bytes=swap)
    cgroup = v2.manager().create("web", limits)
    assert (cgroup.dirs.unified / "memory.swap.max").read_text() == expected


@pytest.mark.parametrize("template", [V2_MOUNTS, HYBRID_MOUNTS])
def test_an_explicit_swap_limit_needs_swap_accounting(tmp_path, template):
    host = Host(tmp_path, template, swap_accounting=False)
    limits = Limits(memory_bytes=32 * MiB, memory_swap_bytes=32 * MiB)
    with pytest.raises(CgroupError) as caught:
        host.manager().create("web", limits)
    assert str(caught.value).startswith(
        "cannot set limits on container web: the memory+swap limit 32M needs "
        "swap accounting, which this host lacks"
    )
    assert "drop the swap limit (--memory-swap)" in str(caught.value)
    assert host.manager().names() == []


@pytest.mark.parametrize("template", [V2_MOUNTS, HYBRID_MOUNTS])
def test_without_swap_accounting_the_default_swap_is_left_unlimited(tmp_path, template):
    host = Host(tmp_path, template, swap_accounting=False)
    manager = host.manager()
    manager.create("web", Limits(memory_bytes=32 * MiB))
    assert not manager.swap_accounting
    names = {path.name for path, _ in host.kernel.writes}
    assert names & {"memory.max", "memory.limit_in_bytes"}
    assert not names & {"memory.swap.max", "memory.memsw.limit_in_bytes"}


def test_v1_writes_the_memory_limit_before_memsw_on_create(hybrid):
    hybrid.manager().create("web", Limits(memory_bytes=32 * MiB))
    memory_writes = [
        p.name for p, _ in hybrid.kernel.writes if p.name.startswith("memory.")
    ]
    assert memory_writes == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]


def test_v1_raising_memory_above_memsw_writes_memsw_first(hybrid):
    cgroup = hybrid.manager().create("web", Limits(memory_bytes=32 * MiB))
    hybrid.kernel.writes.clear()
    cgroup.set_limits(Limits(memory_bytes=256 * MiB))
    assert [p.name for p, _ in hybrid.kernel.writes] == [
        "memory.memsw.limit_in_bytes",
        "memory.limit_in_bytes",
    ]
    memory = cgroup.dirs.path("memory")
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(512 * MiB)


def test_v1_lowering_memory_writes_the_limit_first(hybrid):
    cgroup = hybrid.manager().create("web", Limits(memory_bytes=256 * MiB))
    cgroup.set_limits(Limits(memory_bytes=16 * MiB, memory_swap_bytes=16 * MiB))
    memory = cgroup.dirs.path("memory")
    assert (memory / "memory.limit_in_bytes").read_text() == str(16 * MiB)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(16 * MiB)


@pytest.mark.parametrize("pids_max", [0, -1])
def test_pids_limit_zero_and_minus_one_mean_max(host, pids_max):
    cgroup = host.manager().create("web", Limits(pids_max=pids_max))
    assert (cgroup.dirs.path("pids") / "pids.max").read_text() == "max"
    assert host.kernel.written("pids.max") == ["max"]


def test_v2_cpu_period_alone_keeps_the_quota(v2):
    cgroup = v2.manager().create("web", Limits(cpu_quota_us=20000))
    assert (cgroup.dirs.unified / "cpu.max").read_text() == "20000 100000"
    cgroup.set_limits(Limits(cpu_period_us=50000))
    assert (cgroup.dirs.unified / "cpu.max").read_text() == "20000 50000"


def test_v1_unlimited_cpu_quota_is_minus_one(hybrid):
    cgroup = hybrid.manager().create("web", Limits(cpu_quota_us=20000))
    cgroup.set_limits(Limits(cpu_quota_us=-1))
    assert (cgroup.dirs.path("cpu") / "cpu.cfs_quota_us").read_text() == "-1"


def test_unset_limits_write_nothing(host):
    host.manager().create("web", Limits())
    in_container = {p.name for p, _ in host.kernel.writes if "web" in p.parts}
    assert in_container <= {"cpuset.cpus", "cpuset.mems"}


def test_a_refused_write_names_the_file_value_reason_and_remedy(v2):
    v2.kernel.denied.add("memory.max")
    with pytest.raises(CgroupError) as caught:
        v2.manager().create("web", Limits(memory_bytes=512 * MiB))
    assert str(caught.value) == (
        "cannot set memory limit 512M on container web: writing memory.max "
        "failed (permission denied); run corrald as root or delegate its "
        "cgroup subtree"
    )


def test_a_limit_on_a_controller_the_host_lacks_is_refused(tmp_path):
    template = "\n".join(
        line for line in V1_COMBINED_MOUNTS.splitlines() if "pids" not in line
    )
    host = Host(tmp_path, template + "\n")
    with pytest.raises(CgroupError) as caught:
        host.manager().create("web", Limits(pids_max=10))
    assert str(caught.value).startswith(
        "cannot set limits on container web: the pids cgroup controller is "
        "not mounted on this host"
    )


@pytest.mark.parametrize(
    "limits, message",
    [
        (Limits(memory_bytes=-5), "invalid memory limit -5"),
        (Limits(cpu_period_us=-1), "invalid CPU period -1"),
        (Limits(pids_max=-2), "invalid pids limit -2"),
        (Limits(memory_bytes=MiB, memory_swap_bytes=-3), r"invalid memory\+swap"),
    ],
)
def test_invalid_limits_are_refused_before_anything_is_created(v2, limits, message):
    manager = v2.manager()
    with pytest.raises(CgroupError, match=message):
        manager.create("web", limits)
    assert not (v2.root / "corral").exists()


# -- create, remove, kill -----------------------------------------------------


def test_create_removes_every_dir_it_made_when_a_limit_is_rejected(host):
    manager = host.manager()
    with pytest.raises(CgroupError) as caught:
        manager.create("web", Limits(memory_bytes=64 * MiB, cpu_quota_us=500))
    assert "cannot set CPU quota 500us on container web: writing" in str(caught.value)
    assert "failed (invalid argument); the period must be" in str(caught.value)
    assert manager.names() == []
    assert all(path.is_dir() for path in manager.parent_dirs().all())


def test_create_refuses_an_existing_cgroup_and_leaves_it_in_place(host):
    manager = host.manager()
    manager.create("web", Limits())
    with pytest.raises(CgroupError, match="already exists"):
        manager.create("web", Limits())
    assert all(path.is_dir() for path in manager.open("web").dirs.all())


def test_names_lists_container_cgroups_found_after_a_restart(host):
    host.manager().create("web", Limits())
    host.manager().create("db", Limits())
    again = host.manager()
    assert again.names() == ["db", "web"]
    assert again.open("web").pids() == []


def test_remove_deletes_every_dir_and_tolerates_missing_ones(host):
    cgroup = host.manager().create("web", Limits())
    first = cgroup.dirs.all()[0]
    host.kernel.rmdir(first)
    cgroup.remove()
    cgroup.remove()
    assert not any(path.exists() for path in cgroup.dirs.all())


def test_removing_a_busy_cgroup_says_processes_are_still_in_it(host):
    cgroup = host.manager().create("web", Limits())
    cgroup.procs_files()[-1].write_text("4242\n")
    with pytest.raises(CgroupError) as caught:
        cgroup.remove()
    assert str(caught.value) == (
        "cannot remove the cgroup of container web: processes 4242 are still "
        "in it; kill the container first, then retry"
    )


@pytest.mark.parametrize("host", ["v2", "hybrid"], indirect=True)
def test_kill_uses_cgroup_kill_where_it_exists(host):
    cgroup = host.manager().create("web", Limits())
    for procs in cgroup.procs_files():
        procs.write_text("4242\n")
    cgroup.kill()
    assert host.kernel.written("cgroup.kill") == ["1"]
    assert cgroup.pids() == []


def test_v1_kill_signals_each_member_and_gives_up_after_the_timeout(v1):
    cgroup = v1.manager().create("web", Limits())
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        for procs in cgroup.procs_files():
            procs.write_text(f"{sleeper.pid}\n")
        # The fake tree never drops the pid, so kill() must give up in time.
        with pytest.raises(CgroupError) as caught:
            cgroup.kill(timeout_s=0.2)
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()
    assert str(caught.value) == (
        f"cannot kill container web: processes {sleeper.pid} are still in its "
        "cgroup 0.2 s after SIGKILL; they may be stuck in uninterruptible "
        "sleep (state D in /proc/PID/status); retry later"
    )


def test_v1_kill_thaws_a_frozen_container(hybrid):
    cgroup = hybrid.manager().create("web", Limits())
    state = cgroup.dirs.path("freezer") / "freezer.state"
    state.write_text("FROZEN")
    (cgroup.dirs.unified / "cgroup.kill").unlink()  # an older kernel
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        cgroup.procs_files()[0].write_text(f"{sleeper.pid}\n")
        with pytest.raises(CgroupError):
            cgroup.kill(timeout_s=0.05)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert state.read_text() == "THAWED"


def test_kill_of_a_removed_cgroup_does_nothing(host):
    cgroup = host.manager().create("web", Limits())
    cgroup.remove()
    cgroup.kill()
    assert host.kernel.written("cgroup.kill") == []


# -- readers ------------------------------------------------------------------


def write_files(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def test_v2_readers_parse_the_unified_files(v2):
    dirs = v2.manager().create("web", Limits()).dirs
    write_files(
        dirs.unified,
        {
            "memory.current": "123456\n",
            "memory.stat": "anon 4096\nfile 8192\n",
            "memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n",
            "cpu.stat": "usage_usec 1500\nnr_periods 10\nnr_throttled 4\nthrottled_usec 900\n",
            "pids.current": "3\n",
        },
    )
    assert cgroups.memory_usage_bytes(dirs) == 123456
    assert cgroups.memory_stat(dirs) == {"anon": 4096, "file": 8192}
    assert cgroups.memory_events(dirs) == {
        "low": 0,
        "high": 0,
        "max": 7,
        "oom": 2,
        "oom_kill": 1,
    }
    assert cgroups.cpu_usage_ns(dirs) == 1_500_000
    assert cgroups.cpu_stat(dirs)["throttled_usec"] == 900
    assert cgroups.pids_current(dirs) == 3


@pytest.mark.parametrize("host", ["hybrid", "v1"], indirect=True)
def test_v1_readers_parse_the_v1_files(host):
    dirs = host.manager().create("web", Limits()).dirs
    write_files(
        dirs.path("memory"),
        {
            "memory.usage_in_bytes": "65536\n",
            "memory.stat": "cache 4096\nrss 8192\ntotal_rss 8192\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 1\noom_kill 2\n",
            "memory.failcnt": "17\n",
        },
    )
    (dirs.path("cpuacct") / "cpuacct.usage").write_text("987654321\n")
    (dirs.path("cpu") / "cpu.stat").write_text(
        "nr_periods 10\nnr_throttled 4\nthrottled_time 900000\n"
    )
    (dirs.path("pids") / "pids.current").write_text("5\n")
    assert cgroups.memory_usage_bytes(dirs) == 65536
    assert cgroups.memory_stat(dirs)["rss"] == 8192
    assert cgroups.memory_events(dirs) == {
        "oom_kill_disable": 0,
        "under_oom": 1,
        "oom_kill": 2,
        "max": 17,
    }
    assert cgroups.cpu_usage_ns(dirs) == 987654321
    assert cgroups.cpu_stat(dirs) == {
        "nr_periods": 10,
        "nr_throttled": 4,
        "throttled_usec": 900,
    }
    assert cgroups.pids_current(dirs) == 5


@pytest.mark.parametrize(
    "read",
    [
        cgroups.memory_usage_bytes,
        cgroups.memory_stat,
        cgroups.memory_events,
        cgroups.cpu_usage_ns,
        cgroups.cpu_stat,
        cgroups.pids_current,
    ],
)
def test_reading_a_vanished_cgroup_raises_file_not_found(host, read):
    cgroup = host.manager().create("web", Limits())
    cgroup.remove()
    with pytest.raises(FileNotFoundError):
        read(cgroup.dirs)
    with pytest.raises(FileNotFoundError):
        cgroup.pids()


def test_host_cpu_count_follows_the_affinity_mask():
    assert cgroups.host_cpu_count() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "count, shown",
    [
        (512 * MiB, "512M"),
        (1 << 30, "1G"),
        (1536, "1536B"),
        (3072, "3K"),
        (-1, "unlimited"),
    ],
)
def test_format_bytes_writes_sizes_as_users_do(count, shown):
    assert cgroups.format_bytes(count) == shown
