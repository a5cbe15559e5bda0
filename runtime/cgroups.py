"""Container cgroups on pure cgroup v2, hybrid and pure v1 hosts.

What a reader needs to know about the kernel interface:

- The layout is read from mountinfo, never guessed from directory names: a
  cgroup2 mount at the root means pure v2; v1 hierarchies (one mount per
  hierarchy, whose mount options name its controllers, e.g. "cpu,cpuacct")
  plus a controller-less cgroup2 mount below the root means hybrid; v1
  hierarchies alone mean pure v1. Named hierarchies such as name=systemd
  carry no controllers and are left alone.
- On v1 a process must join one cgroup per hierarchy. A new cpuset cgroup
  refuses tasks until cpuset.cpus and cpuset.mems are filled in, so they are
  copied from the parent. On hybrid the container also joins the unified
  tree, which gives it PSI files, cgroup.events and cgroup.kill.
- On v2 a controller works in a child only when the parent lists it in
  cgroup.subtree_control, which it can do only for controllers in its own
  cgroup.controllers (delegated from above), and only while it holds no
  processes itself.
- The v1 kernel insists on memory.memsw.limit_in_bytes >= memory.limit_in_bytes
  at every moment, so the order of the two writes depends on the direction
  of the change.
- A killed process leaves cgroup.procs when it exits, before it is reaped, so
  waiting for an empty cgroup.procs does not depend on anyone calling wait().
- When a cgroup is removed its files vanish. Readers let FileNotFoundError
  through unchanged, so a metrics scrape can skip a container that went away.
- Hosts without swap accounting (v1 without memory.memsw.*, v2 without
  memory.swap.max) cannot limit swap. An explicit swap limit is refused with
  a CgroupError; the default one (Docker's "swap equal to memory") is not
  applied and swap stays unlimited. CgroupManager.swap_accounting tells the
  daemon so it can warn once at start.
- No device allowlist is set (v1 devices.deny, v2 BPF device programs): the
  devices cgroup is created only so the container sits in every hierarchy.

Only cgroups under corral's own parent are ever created or written to; the
root and every other cgroup are only read.
"""

from __future__ import annotations

import enum
import errno
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ROOT = Path("/sys/fs/cgroup")
DEFAULT_MOUNTINFO = Path("/proc/self/mountinfo")

# v1 hierarchies a container joins; any hierarchy holding one of these counts.
V1_CONTROLLERS = (
    "memory",
    "cpu",
    "cpuacct",
    "pids",
    "blkio",
    "devices",
    "freezer",
    "cpuset",
)
V2_CONTROLLERS = ("memory", "cpu", "pids", "io")
V2_REQUIRED = ("memory", "cpu", "pids")

# Mount options of a v1 cgroup mount that are not controller names.
_V1_FLAGS = {
    "rw",
    "ro",
    "noprefix",
    "clone_children",
    "xattr",
    "cpuset_v2_mode",
    "favordynmods",
    "nofavordynmods",
}

_KILL_WAIT_S = 5.0


class CgroupError(Exception):
    """A cgroup operation failed; the message is meant for users."""


class Layout(enum.Enum):
    V2 = "v2"
    HYBRID = "hybrid"
    V1 = "v1"


@dataclass
class Limits:
    """Resource limits with Docker's meaning.

    None leaves a setting as it is. memory_bytes and cpu_quota_us also
    treat 0 as unset and -1 as unlimited; pids_max 0 or -1 is unlimited.
    memory_swap_bytes is memory+swap in total: -1 unlimited swap, None or 0
    the default of swap equal to memory (a total of twice the memory).
    """

    memory_bytes: int | None = None
    memory_swap_bytes: int | None = None
    cpu_quota_us: int | None = None
    cpu_period_us: int | None = None
    pids_max: int | None = None
    # v2's memory.oom.group: an OOM kill takes every process of the cgroup.
    # Ignored where the file does not exist (v1, hybrid); the daemon then
    # kills the container itself after an OOM kill.
    oom_group: bool = False


@dataclass(frozen=True)
class Hierarchy:
    """One mounted v1 hierarchy."""

    controllers: tuple[str, ...]
    options: str  # the controller mount options, e.g. "cpu,cpuacct"
    mount_point: Path


@dataclass(frozen=True)
class Mounts:
    """The cgroup mounts under a root, as read from mountinfo."""

    layout: Layout
    v1: tuple[Hierarchy, ...]
    unified: Path | None  # the cgroup2 mount: the root on v2, below it on hybrid


@dataclass(frozen=True)
class CgroupDirs:
    """Where one cgroup lives in each tree.

    v1 maps a hierarchy's mount options ("memory", "cpu,cpuacct") to the
    cgroup's directory in it; unified is the cgroup2 directory (v2 and
    hybrid) or None (pure v1).
    """

    layout: Layout
    v1: dict[str, Path] = field(default_factory=dict)
    unified: Path | None = None

    def all(self) -> list[Path]:
        """Every directory, v1 hierarchies first."""
        dirs = list(self.v1.values())
        if self.unified is not None:
            dirs.append(self.unified)
        return dirs

    def has(self, controller: str) -> bool:
        """Whether the cgroup has `controller`'s files (always on v2)."""
        if self.layout is Layout.V2:
            return True
        return any(controller in options.split(",") for options in self.v1)

    def path(self, controller: str) -> Path:
        """The directory holding `controller`'s files."""
        if self.layout is Layout.V2:
            return self.unified
        for options, path in self.v1.items():
            if controller in options.split(","):
                return path
        raise CgroupError(
            f"the {controller} cgroup controller is not mounted on this host "
            f"(no v1 hierarchy in mountinfo has it); mount it at "
            f"/sys/fs/cgroup/{controller} or boot with cgroup v2"
        )


class Cgroupfs:
    """The changes corral makes to cgroupfs: mkdir, rmdir, writing a file.

    Unit tests substitute a fake kernel that keeps the same rules on a plain
    directory tree.
    """

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o755)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def write(self, path: Path, value: str) -> None:
        # One write() call: cgroupfs parses each write on its own.
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


def read_mounts(
    root: Path = DEFAULT_ROOT, mountinfo: Path = DEFAULT_MOUNTINFO
) -> Mounts:
    """Find the cgroup mounts at or below `root` and the layout they form."""
    mounts = _visible_cgroup_mounts(Path(mountinfo).read_text(), Path(root))
    unified = None
    hierarchies: dict[str, Hierarchy] = {}
    for mount_point, fstype, options, device in mounts:
        if fstype == "cgroup2":
            unified = unified or mount_point
            continue
        hierarchy = _v1_hierarchy(mount_point, options)
        if hierarchy is not None and device not in hierarchies:
            hierarchies[device] = hierarchy
    return Mounts(
        layout=_layout(Path(root), unified, hierarchies, mountinfo),
        v1=tuple(hierarchies.values()) if unified != Path(root) else (),
        unified=unified,
    )


def detect_layout(
    root: Path = DEFAULT_ROOT, mountinfo: Path = DEFAULT_MOUNTINFO
) -> Layout:
    """Tell whether the host's cgroups are pure v2, hybrid or pure v1."""
    return read_mounts(root, mountinfo).layout


def _layout(root, unified, hierarchies, mountinfo) -> Layout:
    if unified == root:
        return Layout.V2
    if hierarchies:
        return Layout.HYBRID if unified is not None else Layout.V1
    raise CgroupError(
        f"no usable cgroup mounts under {root} (read {mountinfo}): neither "
        f"cgroup2 at {root} nor v1 hierarchies with the "
        f"{', '.join(V1_CONTROLLERS)} controllers; mount cgroupfs there "
        f"or point corrald at the cgroup root with its cgroup root setting"
    )


def _visible_cgroup_mounts(text: str, root: Path) -> list[tuple]:
    """(mount point, fstype, super options, device) of cgroup mounts under root.

    A later mount at or above an earlier one hides it, as in the mount
    table the process sees.
    """
    visible: list[tuple] = []
    for line in text.splitlines():
        entry = _parse_mountinfo_line(line)
        if entry is None:
            continue
        mount_point = entry[0]
        visible = [m for m in visible if not _is_within(m[0], mount_point)]
        if entry[1] in ("cgroup", "cgroup2") and _is_within(mount_point, root):
            visible.append(entry)
    return visible


def _parse_mountinfo_line(line: str) -> tuple | None:
    before, sep, after = line.partition(" - ")
    fields, tail = before.split(), after.split()
    if not sep or len(fields) < 5 or len(tail) < 3:
        return None
    mount_point = Path(_unescape(fields[4]))
    return mount_point, tail[0], tail[2], fields[2]


def _unescape(text: str) -> str:
    """Undo mountinfo's octal escapes (\\040 for a space)."""
    if "\\" not in text:
        return text
    return text.encode().decode("unicode_escape").encode("latin-1").decode()


def _is_within(path: Path, top: Path) -> bool:
    return path == top or top in path.parents


def _v1_hierarchy(mount_point: Path, options: str) -> Hierarchy | None:
    words = [w for w in options.split(",") if w not in _V1_FLAGS]
    words = [w for w in words if not w.startswith("release_agent=")]
    controllers = tuple(w for w in words if "=" not in w)
    if not set(controllers) & set(V1_CONTROLLERS):
        return None
    return Hierarchy(controllers, ",".join(words), mount_point)


class CgroupManager:
    """Creates and finds container cgroups under corral's parent cgroup.

    The parent is `<hierarchy mount>/<parent>` in every tree corral uses,
    created when missing. `parent` may name a nested path such as a
    systemd service's delegated subtree ("system.slice/corral.service/c").
    """

    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        parent: str = "corral",
        mountinfo: Path = DEFAULT_MOUNTINFO,
        fs: Cgroupfs | None = None,
    ):
        self.root = Path(root)
        self.parent = _check_parent(parent)
        self.mounts = read_mounts(self.root, mountinfo)
        self.layout = self.mounts.layout
        self.swap_accounting = False  # known after setup()
        self._fs = fs or Cgroupfs()
        self._ready = False

    def parent_dirs(self) -> CgroupDirs:
        """corral's parent cgroup in every tree."""
        return self._dirs(self.parent)

    def setup(self) -> None:
        """Create corral's parent cgroups; on v2 enable their controllers.

        Idempotent. Raises CgroupError when a controller corral needs is not
        delegated to the parent. On failure it removes what it created.
        """
        made: list[Path] = []
        try:
            for base, path in self._parent_paths():
                owned = self._make_chain(base, path, made)
                self._prepare_parents(owned)
        except BaseException as err:
            _remove_made(self._fs, made, err)
            raise
        self.swap_accounting = self._has_swap_accounting()
        self._ready = True

    def create(self, name: str, limits: Limits) -> ContainerCgroup:
        """Create the cgroups for container `name` and apply `limits`.

        All or nothing: on any failure the directories made are removed
        again and the error is raised.
        """
        cgroup = self.open(name)
        check_limits(limits)
        if not self._ready:
            self.setup()
        made: list[Path] = []
        try:
            for path in cgroup.dirs.all():
                self._make_container_dir(name, path)
                made.append(path)
                self._copy_cpuset(path)
            cgroup.set_limits(limits)
        except BaseException as err:
            _remove_made(self._fs, made, err)
            raise
        return cgroup

    def open(self, name: str) -> ContainerCgroup:
        """The cgroup of container `name`; nothing on disk is checked."""
        return ContainerCgroup(
            _check_name(name), self._dirs(f"{self.parent}/{name}"), self._fs
        )

    def names(self) -> list[str]:
        """Names of the container cgroups that exist under the parent."""
        found: set[str] = set()
        for parent in self.parent_dirs().all():
            try:
                found.update(e.name for e in os.scandir(parent) if e.is_dir())
            except FileNotFoundError:
                continue
        return sorted(found)

    def _dirs(self, relative: str) -> CgroupDirs:
        v1 = {h.options: h.mount_point / relative for h in self.mounts.v1}
        unified = self.mounts.unified
        return CgroupDirs(
            layout=self.layout,
            v1=v1,
            unified=unified / relative if unified is not None else None,
        )

    def _parent_paths(self) -> list[tuple[Path, Path]]:
        bases = [h.mount_point for h in self.mounts.v1]
        if self.mounts.unified is not None:
            bases.append(self.mounts.unified)
        return [(base, base / self.parent) for base in bases]

    def _make_chain(self, base: Path, path: Path, made: list[Path]) -> list[Path]:
        """mkdir each missing level from base to path; returns corral's levels."""
        owned = []
        level = base
        for part in path.relative_to(base).parts:
            level = level / part
            if not level.is_dir() and self._mkdir_parent(level):
                made.append(level)
                owned.append(level)
        if path not in owned:
            owned.append(path)
        return owned

    def _mkdir_parent(self, path: Path) -> bool:
        """mkdir path; False if someone else made it meanwhile."""
        try:
            self._fs.mkdir(path)
        except FileExistsError:
            return False
        except OSError as err:
            raise CgroupError(
                f"cannot create corral's parent cgroup {path}: mkdir failed "
                f"({_reason(err)}); {_hint_for_access(err)}"
            ) from err
        return True

    def _prepare_parents(self, owned: list[Path]) -> None:
        for path in owned:
            if self.layout is Layout.V2:
                _enable_controllers(path, self._fs)
            elif self._in_cpuset(path):
                _copy_cpuset_from_parent(path, self._fs)

    def _make_container_dir(self, name: str, path: Path) -> None:
        try:
            self._fs.mkdir(path)
        except FileExistsError as err:
            raise CgroupError(
                f"cannot create the cgroup of container {name}: {path} already "
                f"exists; another container uses the name, or a previous run "
                f"left it behind: stop that container or remove the cgroup"
            ) from err
        except OSError as err:
            raise CgroupError(
                f"cannot create the cgroup of container {name}: mkdir {path} "
                f"failed ({_reason(err)}); {_hint_for_access(err)}"
            ) from err

    def _copy_cpuset(self, path: Path) -> None:
        if self.layout is not Layout.V2 and self._in_cpuset(path):
            _copy_cpuset_from_parent(path, self._fs)

    def _in_cpuset(self, path: Path) -> bool:
        return any(
            "cpuset" in h.controllers and h.mount_point in path.parents
            for h in self.mounts.v1
        )

    def _has_swap_accounting(self) -> bool:
        parent = self.parent_dirs()
        if not parent.has("memory"):
            return False
        if self.layout is Layout.V2:
            return (parent.path("memory") / "memory.swap.max").exists()
        return (parent.path("memory") / "memory.memsw.limit_in_bytes").exists()


def _check_parent(parent: str) -> str:
    parts = Path(parent).parts
    if not parts or Path(parent).is_absolute() or any(p in (".", "..") for p in parts):
        raise CgroupError(
            f"invalid cgroup parent {parent!r}: it must be a relative path "
            f"below the cgroup root without '.' or '..', e.g. 'corral'"
        )
    return str(Path(parent))


def _check_name(name: str) -> str:
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise CgroupError(
            f"invalid container cgroup name {name!r}: use a single path "
            f"component such as the container id"
        )
    return name


def _enable_controllers(path: Path, fs: Cgroupfs) -> None:
    """Hand memory, cpu, pids (and io where delegated) to path's children."""
    available = _read_words(path / "cgroup.controllers")
    missing = [c for c in V2_REQUIRED if c not in available]
    if missing:
        raise CgroupError(_not_delegated_message(path, missing))
    enabled = _read_words(path / "cgroup.subtree_control")
    wanted = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
    if not wanted:
        return
    value = " ".join(f"+{c}" for c in wanted)
    try:
        fs.write(path / "cgroup.subtree_control", value)
    except OSError as err:
        raise CgroupError(_subtree_control_message(path, value, err)) from err


def _not_delegated_message(path: Path, missing: list[str]) -> str:
    names = ", ".join(missing)
    plus = " ".join(f"+{c}" for c in missing)
    return (
        f"cannot set up cgroups under {path}: the {names} controller(s) are "
        f"not delegated to it (missing from {path / 'cgroup.controllers'}); "
        f"enable them in the parent with "
        f"`echo '{plus}' > {path.parent / 'cgroup.subtree_control'}`, or run "
        f"corrald as a systemd service with Delegate=yes"
    )


def _subtree_control_message(path: Path, value: str, err: OSError) -> str:
    if err.errno == errno.EBUSY:
        hint = (
            "the cgroup holds processes, and cgroup v2 lets only cgroups "
            "without processes enable controllers for their children; move "
            "those processes (corrald itself, perhaps) into a leaf cgroup or "
            "choose another parent"
        )
    else:
        hint = _hint_for_access(err)
    return (
        f"cannot enable the {value} controllers for containers: writing "
        f"{path / 'cgroup.subtree_control'} failed ({_reason(err)}); {hint}"
    )


def _copy_cpuset_from_parent(path: Path, fs: Cgroupfs) -> None:
    # A v1 cpuset cgroup with empty cpus or mems refuses every task.
    for name in ("cpuset.cpus", "cpuset.mems"):
        if (path / name).read_text().strip():
            continue
        value = (path.parent / name).read_text().strip()
        try:
            fs.write(path / name, value)
        except OSError as err:
            raise CgroupError(
                f"cannot prepare cpuset cgroup {path}: writing {name} "
                f"{value!r} failed ({_reason(err)}); {_hint_for_access(err)}"
            ) from err


def _remove_made(fs: Cgroupfs, made: list[Path], err: BaseException) -> None:
    """Undo mkdirs after a failure, noting on `err` what could not be undone."""
    for path in reversed(made):
        try:
            fs.rmdir(path)
        except FileNotFoundError:
            continue
        except OSError as cleanup_err:
            err.add_note(f"also could not remove {path}: {_reason(cleanup_err)}")


class ContainerCgroup:
    """The cgroup(s) of one container."""

    def __init__(self, name: str, dirs: CgroupDirs, fs: Cgroupfs):
        self.name = name
        self.dirs = dirs
        self._fs = fs

    @property
    def layout(self) -> Layout:
        """The host layout the cgroup lives in."""
        return self.dirs.layout

    def procs_files(self) -> list[Path]:
        """Every cgroup.procs a container process must join."""
        return [path / "cgroup.procs" for path in self.dirs.all()]

    def mounts_in_container(self) -> list[tuple[str, str]]:
        """What the container mounts at /sys/fs/cgroup, as (fstype, options).

        ("cgroup2", "") on v2; on v1 and hybrid one ("cgroup", options) per
        v1 hierarchy, where options such as "cpu,cpuacct" are both the mount
        options and the directory name below /sys/fs/cgroup. On hybrid the
        unified tree follows as ("cgroup2", "unified"), so the container can
        read its own PSI files and cgroup.events, as the host shows them.
        """
        if self.layout is Layout.V2:
            return [("cgroup2", "")]
        mounts = [("cgroup", options) for options in self.dirs.v1]
        if self.layout is Layout.HYBRID and self.dirs.unified is not None:
            mounts.append(("cgroup2", "unified"))
        return mounts

    def pids(self) -> list[int]:
        """Processes in the container's cgroups, in pid order."""
        pids: set[int] = set()
        for procs in self.procs_files():
            pids.update(_read_pids(procs))
        return sorted(pids)

    def set_limits(self, limits: Limits) -> None:
        """Apply the limits that are set; the others stay as they are."""
        check_limits(limits)
        try:
            writes = _limit_writes(self.dirs, limits)
        except CgroupError as err:
            raise CgroupError(
                f"cannot set limits on container {self.name}: {err}"
            ) from err
        except FileNotFoundError as err:
            raise CgroupError(
                f"cannot set limits on container {self.name}: its cgroup "
                f"no longer exists ({err.filename} is missing); recreate "
                f"the container"
            ) from err
        for write in writes:
            self._apply(write)

    def kill(self, timeout_s: float = _KILL_WAIT_S) -> None:
        """SIGKILL every process in the cgroup and wait until none is left.

        Uses cgroup.kill where the kernel has it (v2 and the unified tree
        of hybrid hosts, Linux 5.14+); otherwise signals each pid in
        cgroup.procs, again and again, so that processes forked meanwhile
        die too. A missing cgroup counts as empty.
        """
        deadline = time.monotonic() + timeout_s
        delay_s = 0.002
        while pids := self._live_pids():
            if time.monotonic() >= deadline:
                raise CgroupError(self._still_alive_message(pids, timeout_s))
            self._signal_all(pids)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.1)

    def reset_peak_memory(self) -> None:
        """Start the peak memory figure again, for a cgroup reused by a new
        run. v1 resets memory.max_usage_in_bytes (and the memory+swap one)
        on a write of 0; v2's memory.peak has no global reset (Linux 6.12
        resets it only for the writer's own open file), so it keeps the
        peak since the cgroup was made. A missing cgroup is fine."""
        if self.layout is Layout.V2 or not self.dirs.has("memory"):
            return
        memory = self.dirs.path("memory")
        for name in ("memory.max_usage_in_bytes", "memory.memsw.max_usage_in_bytes"):
            try:
                self._fs.write(memory / name, "0")
            except FileNotFoundError:
                continue
            except OSError as err:
                raise CgroupError(
                    f"cannot reset {name} of container {self.name}: {_reason(err)}"
                ) from err

    def remove(self) -> None:
        """rmdir the container's cgroups; ones already gone are fine.

        Raises CgroupError when processes are still in the cgroup (EBUSY).
        """
        busy = False
        for path in self.dirs.all():
            try:
                self._fs.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError as err:
                if err.errno != errno.EBUSY:
                    raise CgroupError(
                        f"cannot remove the cgroup of container {self.name}: "
                        f"rmdir {path} failed ({_reason(err)}); "
                        f"{_hint_for_access(err)}"
                    ) from err
                busy = True
        if busy:
            raise CgroupError(self._busy_message())

    def _apply(self, write: _Write) -> None:
        try:
            self._fs.write(write.path, write.value)
        except OSError as err:
            raise CgroupError(
                f"cannot set {write.label} {write.shown} on container "
                f"{self.name}: writing {write.path.name} failed "
                f"({_reason(err)}); {_limit_hint(write, err)}"
            ) from err

    def _live_pids(self) -> set[int]:
        pids: set[int] = set()
        for procs in self.procs_files():
            try:
                pids.update(_read_pids(procs))
            except FileNotFoundError:
                continue
        return pids

    def _signal_all(self, pids: set[int]) -> None:
        kill_file = self.dirs.unified and self.dirs.unified / "cgroup.kill"
        if kill_file and kill_file.exists():
            try:
                self._fs.write(kill_file, "1")
            except FileNotFoundError:
                pass  # removed meanwhile: nothing left to kill
            return
        _kill_members(pids, self._live_pids)
        self._thaw()

    def _thaw(self) -> None:
        # A v1 freezer holds frozen tasks even against SIGKILL until thawed.
        if self.layout is Layout.V2 or not self.dirs.has("freezer"):
            return
        state = self.dirs.path("freezer") / "freezer.state"
        try:
            if state.read_text().strip() != "THAWED":
                self._fs.write(state, "THAWED")
        except FileNotFoundError:
            pass

    def _still_alive_message(self, pids: set[int], timeout_s: float) -> str:
        return (
            f"cannot kill container {self.name}: processes "
            f"{', '.join(map(str, sorted(pids)))} are still in its cgroup "
            f"{timeout_s:g} s after SIGKILL; they may be stuck in "
            f"uninterruptible sleep (state D in /proc/PID/status); retry later"
        )

    def _busy_message(self) -> str:
        pids = sorted(self._live_pids())
        if pids:
            why = f"processes {', '.join(map(str, pids))} are still in it"
        else:
            why = "processes are still in it (exiting) or it has child cgroups"
        return (
            f"cannot remove the cgroup of container {self.name}: {why}; "
            f"kill the container first, then retry"
        )


def _kill_members(pids: set[int], members) -> None:
    """SIGKILL pids that are still members once pinned by a pidfd.

    The pidfd pins the process, so re-reading the member list afterwards
    rules out signalling a recycled pid that now belongs to someone else.
    """
    pidfds = {}
    try:
        for pid in pids:
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError as err:
                if err.errno != errno.ENOSYS:
                    raise
                # Linux < 5.3 has no pidfds; plain kill() leaves the short
                # window between reading cgroup.procs and signalling.
                _kill_pid(pid)
        still_members = members()
        for pid, pidfd in pidfds.items():
            if pid in still_members:
                _send_sigkill(pidfd)
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # exited meanwhile


def _send_sigkill(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass  # exited meanwhile


# -- limits -----------------------------------------------------------------


@dataclass(frozen=True)
class _Write:
    label: str  # "memory limit", as users call the setting
    shown: str  # the value as users wrote it, "512M"
    path: Path
    value: str  # what the kernel file gets
    invalid_hint: str  # what to do when the kernel answers EINVAL


def check_limits(limits: Limits) -> None:
    """Reject values no kernel accepts, before anything is created."""
    checks = (
        ("memory limit", limits.memory_bytes, -1),
        ("CPU quota", limits.cpu_quota_us, -1),
        ("CPU period", limits.cpu_period_us, 0),
        ("pids limit", limits.pids_max, -1),
    )
    for label, value, lowest in checks:
        if value is not None and value < lowest:
            raise CgroupError(
                f"invalid {label} {value}: use a positive number"
                + (", or -1 for no limit" if lowest == -1 else "")
            )
    swap_total_bytes(limits.memory_bytes, limits.memory_swap_bytes)


def swap_total_bytes(
    memory_bytes: int | None, memory_swap_bytes: int | None
) -> int | None:
    """The memory+swap total to apply under Docker's rules.

    -1 means unlimited swap; None means there is nothing to write (no
    memory limit). Without an explicit total, swap equals memory.
    """
    if memory_swap_bytes is not None and memory_swap_bytes < -1:
        raise CgroupError(
            f"invalid memory+swap limit {memory_swap_bytes}: use a number of "
            f"bytes at least the memory limit, or -1 for unlimited swap"
        )
    if not memory_bytes:
        if memory_swap_bytes and memory_swap_bytes > 0:
            raise CgroupError(
                "a memory+swap limit needs a memory limit; set the memory "
                "limit too (--memory)"
            )
        return None
    if memory_bytes == -1 or memory_swap_bytes == -1:
        return -1
    if not memory_swap_bytes:
        return 2 * memory_bytes
    if memory_swap_bytes < memory_bytes:
        raise CgroupError(
            f"memory+swap limit {format_bytes(memory_swap_bytes)} is lower than "
            f"the memory limit {format_bytes(memory_bytes)}; set it to at least "
            f"the memory limit, or -1 for unlimited swap"
        )
    return memory_swap_bytes


def _limit_writes(dirs: CgroupDirs, limits: Limits) -> list[_Write]:
    return (
        _memory_writes(dirs, limits)
        + _oom_group_writes(dirs, limits)
        + _cpu_writes(dirs, limits)
        + _pids_writes(dirs, limits)
    )


def _oom_group_writes(dirs: CgroupDirs, limits: Limits) -> list[_Write]:
    if not limits.oom_group or dirs.layout is not Layout.V2:
        return []
    path = dirs.path("memory") / "memory.oom.group"
    if not path.exists():
        return []
    return [_Write("OOM group kill", "on", path, "1",
                   "the kernel rejected memory.oom.group; run without --oom-kill-group")]


def _memory_writes(dirs: CgroupDirs, limits: Limits) -> list[_Write]:
    memory = limits.memory_bytes
    total = swap_total_bytes(memory, limits.memory_swap_bytes)
    if not memory:
        return []
    explicit_swap = limits.memory_swap_bytes not in (None, 0, -1)
    path = dirs.path("memory")
    if dirs.layout is Layout.V2:
        return _memory_writes_v2(path, memory, total, explicit_swap)
    return _memory_writes_v1(path, memory, total, explicit_swap)


def _memory_writes_v2(
    path: Path, memory: int, total: int, explicit: bool
) -> list[_Write]:
    writes = [
        _Write(
            "memory limit",
            format_bytes(memory),
            path / "memory.max",
            _v2_value(memory),
            "the kernel rejected the value; use a positive number of bytes",
        )
    ]
    swap_file = path / "memory.swap.max"
    if not swap_file.exists():
        _require_no_swap_limit(explicit, total, swap_file)
        return writes
    swap = -1 if total == -1 else total - memory
    writes.append(
        _Write(
            "swap limit",
            format_bytes(swap),
            swap_file,
            _v2_value(swap),
            "the kernel rejected the value; use a memory+swap limit at least "
            "the memory limit",
        )
    )
    return writes


def _memory_writes_v1(
    path: Path, memory: int, total: int, explicit: bool
) -> list[_Write]:
    limit = _Write(
        "memory limit",
        format_bytes(memory),
        path / "memory.limit_in_bytes",
        str(memory),
        "the kernel rejected the value; memory+swap must not be lower "
        "than the memory limit",
    )
    memsw_file = path / "memory.memsw.limit_in_bytes"
    if not memsw_file.exists():
        _require_no_swap_limit(explicit, total, memsw_file)
        return [limit]
    memsw = _Write(
        "memory+swap limit",
        format_bytes(total),
        memsw_file,
        str(total),
        "the kernel rejected the value; memory+swap must not be lower "
        "than the memory limit",
    )
    # memsw must stay >= the memory limit after each single write.
    if _v1_bytes(memory) > _read_int(memsw_file):
        return [memsw, limit]
    return [limit, memsw]


def _require_no_swap_limit(explicit: bool, total: int, missing: Path) -> None:
    if explicit:
        raise CgroupError(
            f"the memory+swap limit {format_bytes(total)} needs swap "
            f"accounting, which this host lacks ({missing.name} does not "
            f"exist); drop the swap limit (--memory-swap), or enable swap "
            f"accounting (kernel parameter swapaccount=1)"
        )


def _cpu_writes(dirs: CgroupDirs, limits: Limits) -> list[_Write]:
    quota, period = limits.cpu_quota_us or None, limits.cpu_period_us or None
    if quota is None and period is None:
        return []
    path = dirs.path("cpu")
    hint = "the period must be 1000-1000000 us and the quota at least 1000 us"
    if dirs.layout is Layout.V2:
        current_quota, current_period = (path / "cpu.max").read_text().split()
        value = (
            f"{_v2_value(quota) if quota else current_quota} {period or current_period}"
        )
        return [
            _Write(
                "CPU quota", _format_cpu(quota, period), path / "cpu.max", value, hint
            )
        ]
    writes = []
    if period:
        writes.append(
            _Write(
                "CPU period",
                f"{period}us",
                path / "cpu.cfs_period_us",
                str(period),
                hint,
            )
        )
    if quota:
        shown = "unlimited" if quota == -1 else f"{quota}us"
        writes.append(
            _Write("CPU quota", shown, path / "cpu.cfs_quota_us", str(quota), hint)
        )
    return writes


def _pids_writes(dirs: CgroupDirs, limits: Limits) -> list[_Write]:
    if limits.pids_max is None:
        return []
    value = "max" if limits.pids_max in (0, -1) else str(limits.pids_max)
    hint = "use a positive number, or 0 or -1 for no limit"
    return [_Write("pids limit", value, dirs.path("pids") / "pids.max", value, hint)]


def _limit_hint(write: _Write, err: OSError) -> str:
    if err.errno == errno.EINVAL:
        return write.invalid_hint
    if err.errno == errno.EBUSY:
        return "the container uses more than that right now; choose a higher limit"
    if err.errno == errno.ENOENT and write.path.parent.is_dir():
        return (
            f"the controller is not enabled for corral's cgroups; check "
            f"{write.path.parent.parent / 'cgroup.subtree_control'}"
        )
    if err.errno == errno.ENOENT:
        return "the container's cgroup no longer exists; recreate the container"
    return _hint_for_access(err)


def _v2_value(limit: int) -> str:
    return "max" if limit == -1 else str(limit)


def _v1_bytes(limit: int) -> int:
    return 1 << 63 if limit == -1 else limit


def _format_cpu(quota: int | None, period: int | None) -> str:
    if quota is None:
        return f"period {period}us"
    shown = "unlimited" if quota == -1 else f"{quota}us"
    return f"{shown} per {period}us" if period else shown


def format_bytes(count: int) -> str:
    """Bytes as users write them: 512M, 1G, 1000B; -1 is unlimited."""
    if count == -1:
        return "unlimited"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if count and count % size == 0:
            return f"{count // size}{unit}"
    return f"{count}B"


# -- readers for metrics and OOM watching -----------------------------------
# Each takes the container's CgroupDirs and works on every layout. A cgroup
# that vanished raises FileNotFoundError unchanged.


def memory_usage_bytes(dirs: CgroupDirs) -> int:
    """Memory charged to the cgroup, page cache included."""
    name = "memory.current" if dirs.layout is Layout.V2 else "memory.usage_in_bytes"
    return _read_int(dirs.path("memory") / name)


def memory_stat(dirs: CgroupDirs) -> dict[str, int]:
    """memory.stat as a dict; the keys differ between v1 and v2."""
    return _read_keyed(dirs.path("memory") / "memory.stat")


def memory_peak_bytes(dirs: CgroupDirs) -> int | None:
    """The most memory the cgroup has used since it was made (on v1, since
    reset_peak_memory); None where the kernel does not keep it (v2 before
    Linux 5.19)."""
    name = "memory.peak" if dirs.layout is Layout.V2 else "memory.max_usage_in_bytes"
    try:
        return _read_int(dirs.path("memory") / name)
    except (FileNotFoundError, CgroupError, ValueError):
        return None


def memory_events(dirs: CgroupDirs) -> dict[str, int]:
    """OOM and limit counters, keyed as in v2's memory.events.

    v2 returns memory.events as it is ("max", "oom", "oom_kill", ...). v1
    maps memory.failcnt to "max" and memory.oom_control's oom_kill (Linux
    4.13+) to "oom_kill", and adds its under_oom and oom_kill_disable.
    """
    path = dirs.path("memory")
    if dirs.layout is Layout.V2:
        return _read_keyed(path / "memory.events")
    events = _read_keyed(path / "memory.oom_control")
    events["max"] = _read_int(path / "memory.failcnt")
    return events


def cpu_usage_ns(dirs: CgroupDirs) -> int:
    """CPU time used by the cgroup's processes, in nanoseconds."""
    if dirs.layout is Layout.V2:
        return _read_keyed(dirs.path("cpu") / "cpu.stat")["usage_usec"] * 1000
    return _read_int(dirs.path("cpuacct") / "cpuacct.usage")


def cpu_stat(dirs: CgroupDirs) -> dict[str, int]:
    """CFS bandwidth counters keyed as in v2 (nr_periods, nr_throttled, throttled_usec)."""
    stat = _read_keyed(dirs.path("cpu") / "cpu.stat")
    if "throttled_time" in stat:
        stat["throttled_usec"] = stat.pop("throttled_time") // 1000
    return stat


def pids_current(dirs: CgroupDirs) -> int:
    """Number of tasks (threads included) in the cgroup."""
    return _read_int(dirs.path("pids") / "pids.current")


def host_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the host total)."""
    return len(os.sched_getaffinity(0)) or os.cpu_count() or 1


# -- small helpers ----------------------------------------------------------


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def _read_words(path: Path) -> list[str]:
    return path.read_text().split()


def _read_pids(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()]


def _read_keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file ("key value" per line) as a dict."""
    result = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key and value.strip().lstrip("-").isdigit():
            result[key] = int(value)
    return result


def _reason(err: OSError) -> str:
    return os.strerror(err.errno).lower() if err.errno else str(err)


def _hint_for_access(err: OSError) -> str:
    if err.errno in (errno.EACCES, errno.EPERM):
        return "run corrald as root or delegate its cgroup subtree"
    if err.errno == errno.EROFS:
        return "the cgroup filesystem is mounted read-only; run corrald where /sys/fs/cgroup is writable"
    if err.errno == errno.ENOENT:
        return "a parent cgroup vanished; restart corrald to recreate it"
    return "see the kernel log (dmesg) for details"
