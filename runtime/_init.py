"""Container init helper: builds one container's namespaces and execs its command,
or runs one more command inside a running container.

Run by runtime/process.py as

    python -I -S _init.py --mode init|exec --spec-fd N --status-fd M

with the spec as one JSON object in a memfd (fd N, read with pread from offset
0) and the write end of the status pipe (fd M), or forked with the same fds by
the helper server (see "Server mode" below). The helper prints one JSON line
per message to the status pipe: {"pid": P} once the process exists (P is its
pid on the host: PID 1 of a new container, or the exec'd process), and
{"error": "...", "exit_code": C} when setup or exec fails, after which the
failing process exits with C.

Facts this file relies on:
- It runs stdlib-only and imports as little as possible: the daemon waits for
  it on every container start. The spec is parsed with the C scanner of _json
  (json itself pulls in re and enum, several ms), signals go through _signal.
- unshare(CLONE_NEWPID) moves only the children of the caller into the new pid
  namespace, so the helper forks; its child is PID 1 there. The helper writes
  the child's host pid and exits, so PID 1 is reparented to the daemon, which
  is a child subreaper.
- The status pipe is O_CLOEXEC here and in PID 1: the daemon sees EOF once the
  helper has exited and PID 1 has exec'd the command (or died).
- The cgroup namespace takes the caller's cgroups as its root at unshare time,
  so cgroups are joined first.
- Every mount happens in the container's private mount namespace; nothing is
  mounted on the host, and nothing is left behind if the daemon dies.

In exec mode the helper joins the namespaces of a running container's PID 1
instead of creating them:
- setns(CLONE_NEWPID), like unshare, moves only the children of the caller,
  so the helper forks here too; the child is the exec'd process and, once the
  helper exits, the daemon's child again (it is the nearest subreaper among
  the helper's ancestors). It is not PID 1, so it dies with the container.
- A pidfd of PID 1, opened by the daemon, proves that the namespace files
  under /proc/PID/ns belonged to it: a pid is reused only after its process
  was reaped, and a pidfd turns readable as soon as its process exits.
- setns(CLONE_NEWNS) sets root and cwd to the top of the namespace's first
  mount. That is the container's rootfs only where the host's own root was
  pivoted to, not chrooted into (an initramfs that chroots leaves its rootfs
  there), so the process then moves to PID 1's root, opened beforehand from
  /proc/PID/root. The host's files (the cgroups' procs files among them) are
  out of reach after it.

Server mode (--mode server --socket-fd N) saves the interpreter's start and
imports on every container start and exec: the process starts once, imports
everything a helper needs, and forks one helper per request read from fd N, a
SOCK_SEQPACKET socket whose other end the daemon holds:
- A request is one message: JSON {"mode": "init"|"exec", "fds": [S, T, ...]}
  and, through SCM_RIGHTS, the helper's stdout, stderr, spec memfd, status
  pipe and any further fds. The helper gets them at 1, 2 and at the numbers
  the daemon gave (S is the spec fd, T the status fd; a target_pidfd in the
  spec names its own number), /dev/null at 0, and no other fd: the server's
  socket never reaches a container. The reply is {"pid": P} or {"error": E}.
- The server forks a short-lived child that forks the helper, passes its pid
  back through a pipe and exits. The helper, orphaned, goes to the nearest
  child subreaper among its ancestors, the daemon (the server is not one), so
  the daemon waits on it and on the process it forks as when it starts the
  helper itself. The server reaps its child before it replies: once the reply
  is read, the helper is the daemon's child.
- The helper leads a session of its own, as under subprocess's
  start_new_session, and runs exactly the code of the other modes; it inherits
  the server's state, which the server took from the daemon when it started
  (cgroups, limits, signal dispositions; the helper resets the signal mask).
- The server exits when the daemon's end of the socket closes.
"""

import _json
import _signal
import _socket
import ctypes
import os
import sys

EXIT_SETUP = 125
EXIT_CANNOT_EXEC = 126
EXIT_NOT_FOUND = 127

EPERM = 1
ENOENT = 2
ENOMEM = 12

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2
MS_RO_NOSUID_NODEV_NOEXEC = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RO_NOSUID_NODEV = 0x1 | 0x2 | 0x4
MOUNT_ATTR_RO_NOSUID_NODEV_NOEXEC = MOUNT_ATTR_RO_NOSUID_NODEV | 0x8
CLOSE_RANGE_CLOEXEC = 0x4

# Syscalls numbered 424 and up share one number on every architecture.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_CLOSE_RANGE = 436
SYS_MOUNT_SETATTR = 442
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}
SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134, "riscv64": 134}
SIGSET_BYTES = 8

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

# Where an init program given in the spec (--init) appears in the container.
INIT_TARGET = "/sbin/corral-init"
# The namespaces an exec joins. The container has no user or time namespace.
EXEC_NAMESPACES = ("cgroup", "ipc", "uts", "net", "pid", "mnt")

# Docker's default PATH: searched for the command when the env sets none
# (the env itself stays as given).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEV_NODES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
DEV_LINKS = (
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)
# The kernel copies at most one page of mount options.
MOUNT_DATA_MAX = 4095

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)


class SetupError(Exception):
    def __init__(self, message, exit_code=EXIT_SETUP, errno=None):
        super().__init__(message)
        self.exit_code = exit_code
        self.errno = errno


class _JsonContext:
    """The attributes _json.make_scanner reads; what json.JSONDecoder sets."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None


def main(argv):
    mode, *fds = parse_args(argv)
    if mode == "server":
        serve(*fds)
    run_helper(mode, *fds)


def run_helper(mode, spec_fd, status_fd):
    prepare, finish = MODES[mode]
    try:
        spec = prepare(spec_fd, status_fd)
        pid = fork(spec)
    except Exception as err:  # noqa: BLE001 - every failure must reach the status pipe
        fail(status_fd, err)
    if pid:
        report(status_fd, f'{{"pid": {pid}}}')
        os._exit(0)
    try:
        finish(spec)
    except Exception as err:  # noqa: BLE001 - every failure must reach the status pipe
        fail(status_fd, err)


def fork(spec):
    try:
        return os.fork()
    except OSError as err:
        # A pid namespace whose PID 1 has exited accepts no new process.
        exec_target = spec.get("target_pidfd")
        if err.errno == ENOMEM and exec_target is not None and has_exited(exec_target):
            raise not_running(spec["target_pid"]) from err
        raise os_error("fork the container's process", err.errno) from err


def setup_helper(spec_fd, status_fd):
    """Read the spec, join the cgroups and unshare; the caller forks PID 1."""
    # pass_fds made the status fd inheritable; it must close when PID 1 execs.
    os.set_inheritable(status_fd, False)

    spec = read_spec(spec_fd)

    os.umask(0)

    # The daemon's threads may block signals; the mask survives exec.
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())

    for procs in spec["cgroup_procs"]:
        join_cgroup(procs)

    # After the joins: the cgroup namespace is rooted at the current cgroups.
    unshare(namespace_flags(spec["network"]))
    return spec


def setup_container(spec):
    """Run as PID 1 of the new pid namespace; ends in exec or raises."""
    root = spec["rootfs_target"]

    os.setsid()

    # Nothing mounted below may propagate back to the host.
    mount(None, "/", None, MS_REC | MS_PRIVATE)

    mount_overlay(spec)

    mount_proc(root)

    mount_sys(root, spec["network"])

    mount_cgroups(root + "/sys/fs/cgroup", spec["cgroup_mounts"])

    mount_dev(root + "/dev")

    # Host files are picked up now, while the host tree is reachable, and
    # attached after pivot_root so that their container paths resolve inside
    # the rootfs (an image symlink cannot point them at the host).
    bind_sources = clone_bind_sources(spec["bind_files"], spec["init_path"])

    set_hostname(spec["hostname"])

    if spec["network"] == "none":
        bring_up_loopback()

    pivot_root(root)

    attach_bind_files(bind_sources)

    uid, gid, groups = resolve_user(spec["user"])

    # Created as root, like Docker, but entered as the user so that a
    # directory the user may not enter fails here rather than in the command.
    make_dirs(spec["cwd"])

    drop_privileges(uid, gid, groups)

    change_dir(spec["cwd"])

    init = None if spec["init_path"] is None else INIT_TARGET
    exec_command(spec["args"], spec["env"], init)


def setup_exec_helper(spec_fd, status_fd):
    """Read the spec and open PID 1's namespaces; join its pid namespace
    for the children only, so the caller forks the exec'd process."""
    os.set_inheritable(status_fd, False)

    spec = read_spec(spec_fd)

    os.set_inheritable(spec["target_pidfd"], False)

    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())

    namespaces = open_namespaces(spec["target_pid"], spec["target_pidfd"])

    enter_namespace(namespaces.pop("pid"), "pid")
    spec["namespaces"] = namespaces
    return spec


def setup_exec(spec):
    """Run as the exec'd process, in the container's pid namespace; ends in
    exec or raises."""
    namespaces = spec["namespaces"]

    os.setsid()

    for procs in spec["cgroup_procs"]:
        join_cgroup(procs)

    # After the joins, so that the process sits at or below the cgroup
    # namespace's root and its cgroups read as PID 1's do.
    enter_namespace(namespaces["cgroup"], "cgroup")

    enter_namespace(namespaces["ipc"], "ipc")

    enter_namespace(namespaces["uts"], "uts")

    enter_namespace(namespaces["net"], "net")

    # Last: the host's cgroup files are out of reach after it.
    enter_namespace(namespaces["mnt"], "mnt")

    enter_root(namespaces["root"])

    uid, gid, groups = resolve_user(spec["user"])

    drop_privileges(uid, gid, groups)

    change_dir(spec["cwd"])

    exec_command(spec["args"], spec["env"])


MODES = {
    "init": (setup_helper, setup_container),
    "exec": (setup_exec_helper, setup_exec),
}
MODE_FDS = {
    "init": ("--spec-fd", "--status-fd"),
    "exec": ("--spec-fd", "--status-fd"),
    "server": ("--socket-fd",),
}
USAGE = (
    b"usage: _init.py --mode init|exec --spec-fd N --status-fd M\n"
    b"       _init.py --mode server --socket-fd N\n"
)


def parse_args(argv):
    """(mode, fd, ...): the spec and status fds, or the server's socket fd."""
    try:
        options = dict(zip(argv[0::2], argv[1::2], strict=True))
        names = MODE_FDS[options["--mode"]]
        return options["--mode"], *(int(options[name]) for name in names)
    except (ValueError, KeyError):
        os.write(2, USAGE)
        os._exit(EXIT_SETUP)


def read_spec(spec_fd):
    size = os.fstat(spec_fd).st_size
    data = os.pread(spec_fd, size, 0)
    os.close(spec_fd)
    if len(data) != size:
        raise SetupError(f"cannot read the init spec: got {len(data)} of {size} bytes")
    spec, _ = _json.make_scanner(_JsonContext)(data.decode(), 0)
    return spec


def report(status_fd, line):
    try:
        os.write(status_fd, line.encode() + b"\n")
    except OSError:
        # The daemon is gone; the container carries on without it.
        pass


def fail(status_fd, err):
    code = err.exit_code if isinstance(err, SetupError) else EXIT_SETUP
    if isinstance(err, SetupError):
        message = str(err)
    else:
        message = f"container init failed unexpectedly: {err!r}"
    # Writes up to PIPE_BUF are atomic, so the pid and error lines never mix.
    message = _json.encode_basestring_ascii(message[:2000])
    report(status_fd, f'{{"error": {message}, "exit_code": {code}}}')
    os._exit(code)


def os_error(what, errno):
    reason = os.strerror(errno)
    return SetupError(f"cannot {what}: {reason[:1].lower()}{reason[1:]}", errno=errno)


def check(result, what):
    if result < 0:
        raise os_error(what, ctypes.get_errno())
    return result


def syscall(number, *args):
    return _libc.syscall(ctypes.c_long(number), *args)


def encode(text):
    return None if text is None else os.fsencode(text)


def join_cgroup(procs):
    try:
        fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as err:
        raise os_error(f"join cgroup {procs}", err.errno) from err
    try:
        os.write(fd, b"%d" % os.getpid())
    except OSError as err:
        raise os_error(f"join cgroup {procs}", err.errno) from err
    finally:
        os.close(fd)


def open_namespaces(pid, pidfd):
    """fds of PID 1's namespaces and of its root directory ("root"), by
    name; refused once PID 1 has exited."""
    namespaces = {}
    for name in EXEC_NAMESPACES:
        path = f"/proc/{pid}/ns/{name}"
        try:
            namespaces[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            # An exited process keeps no namespaces, even before it is reaped.
            raise not_running(pid) from None
        except OSError as err:
            raise os_error(f"open {path}", err.errno) from err
    namespaces["root"] = open_root(pid)
    # Not exited now, so not reaped while the files were opened: they were
    # PID 1's and no later holder's of the pid.
    if has_exited(pidfd):
        raise not_running(pid)
    return namespaces


def open_root(pid):
    path = f"/proc/{pid}/root"
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise not_running(pid) from None
    except OSError as err:
        raise os_error(f"open the container's root {path}", err.errno) from err


def enter_root(root_fd):
    try:
        os.fchdir(root_fd)
        os.chroot(".")
    except OSError as err:
        raise os_error("enter the container's root directory", err.errno) from err
    os.close(root_fd)


def has_exited(pidfd):
    # Imported here: only exec mode needs it, and init mode starts faster.
    import select

    readable, _, _ = select.select([pidfd], [], [], 0)
    return bool(readable)


def not_running(pid):
    return SetupError(
        f"container is not running: its PID 1 (host pid {pid}) has exited; "
        "start the container, then exec again"
    )


def enter_namespace(fd, name):
    check(_libc.setns(fd, 0), f"join the container's {name} namespace")


def namespace_flags(network):
    flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP
    flags |= CLONE_NEWPID
    if network == "none":
        return flags | CLONE_NEWNET
    if network == "host":
        return flags
    raise SetupError(f'unknown network mode "{network}"; use "none" or "host"')


def unshare(flags):
    check(_libc.unshare(flags), "unshare namespaces")


def mount(source, target, fstype, flags, data=None):
    if flags & MS_BIND:
        what = f"bind-mount {source} on {target}"
    elif flags & MS_REMOUNT:
        what = f"remount {target}"
    elif flags & MS_PRIVATE:
        what = f"make {target} private"
    else:
        what = f"mount {fstype} on {target}"
    result = _libc.mount(
        encode(source), encode(target), encode(fstype), flags, encode(data)
    )
    check(result, what)


def mount_overlay(spec):
    lower = spec["rootfs_lower"]
    upper = spec["rootfs_upper"]
    work = spec["rootfs_work"]
    target = spec["rootfs_target"]
    options = overlay_options(lower, upper, work)
    if len(options) > MOUNT_DATA_MAX:
        # Long layer lists exceed the one page the kernel copies; overlayfs
        # resolves relative paths against the caller's cwd.
        base = os.path.commonpath([*lower, upper, work])
        os.chdir(base)
        options = overlay_options(
            [os.path.relpath(path, base) for path in lower],
            os.path.relpath(upper, base),
            os.path.relpath(work, base),
        )
    if len(options) > MOUNT_DATA_MAX:
        raise SetupError(
            f"cannot mount the rootfs: {len(lower)} image layers make "
            f"overlay options of {len(options)} bytes, more than the kernel's "
            f"{MOUNT_DATA_MAX}; use an image with fewer layers"
        )
    mount("overlay", target, "overlay", 0, options)


def overlay_options(lower, upper, work):
    return f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}"


def make_mountpoint(path):
    """Create a directory to mount on; refuse one that is a symlink."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not os.path.isdir(path) or os.path.islink(path):
            raise SetupError(
                f"cannot mount on {path}: the image has a non-directory there"
            ) from None
    except OSError as err:
        raise os_error(f"create mountpoint {path}", err.errno) from err


def mount_proc(root):
    make_mountpoint(root + "/proc")
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    mount("proc", root + "/proc", "proc", flags)


def mount_sys(root, network):
    make_mountpoint(root + "/sys")
    try:
        mount("sysfs", root + "/sys", "sysfs", MS_RO_NOSUID_NODEV_NOEXEC)
    except SetupError as err:
        # sysfs refuses a mount from a process without CAP_SYS_ADMIN over the
        # network namespace's owner (corrald inside a user namespace). With
        # the host's network the host's /sys shows the same devices.
        if network != "host" or err.errno != EPERM:
            raise
        bind_host_sys(root + "/sys")


def bind_host_sys(target):
    mount("/sys", target, None, MS_BIND | MS_REC)
    set_mount_attr(
        AT_FDCWD,
        encode(target),
        AT_RECURSIVE,
        MOUNT_ATTR_RO_NOSUID_NODEV_NOEXEC,
        f"make {target} read-only",
    )


def set_mount_attr(dirfd, path, flags, attr_set, what):
    attr = (ctypes.c_uint64 * 4)(attr_set, 0, 0, 0)
    result = syscall(
        SYS_MOUNT_SETATTR,
        ctypes.c_int(dirfd),
        path,
        ctypes.c_uint(flags),
        attr,
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    check(result, what)


def mount_cgroups(target, cgroup_mounts):
    """Mount the container's cgroups read-only, as Docker lays them out.

    cgroup_mounts holds (fstype, name) pairs: ("cgroup2", "") alone is a pure
    v2 host; otherwise a tmpfs holds one directory per hierarchy, each
    ("cgroup", options) at the options minus "name=" (a v1 hierarchy) and
    ("cgroup2", dirname) at dirname (the unified tree on hybrid hosts).
    """
    if not cgroup_mounts:
        return
    if cgroup_mounts == [["cgroup2", ""]]:
        mount("cgroup2", target, "cgroup2", MS_RO_NOSUID_NODEV_NOEXEC)
        return
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    mount("tmpfs", target, "tmpfs", flags, "mode=755")
    for fstype, name in cgroup_mounts:
        mount_cgroup(target, fstype, name)
    mount(None, target, None, MS_REMOUNT | MS_RO_NOSUID_NODEV_NOEXEC, "mode=755")


def mount_cgroup(target, fstype, name):
    if fstype == "cgroup2":
        make_mountpoint(f"{target}/{name}")
        mount("cgroup2", f"{target}/{name}", "cgroup2", MS_RO_NOSUID_NODEV_NOEXEC)
        return
    if fstype != "cgroup":
        raise SetupError(f'cannot mount cgroups of unknown type "{fstype}"')
    dirname = name.replace("name=", "")
    make_mountpoint(f"{target}/{dirname}")
    mount("cgroup", f"{target}/{dirname}", "cgroup", MS_RO_NOSUID_NODEV_NOEXEC, name)
    if "," in dirname:
        # cpu,cpuacct is also reachable as cpu and cpuacct, as on the host.
        for alias in dirname.split(","):
            symlink(dirname, f"{target}/{alias}")


def mount_dev(dev):
    make_mountpoint(dev)
    flags = MS_NOSUID | MS_STRICTATIME
    mount("tmpfs", dev, "tmpfs", flags, "mode=755,size=65536k")
    for name, major, minor in DEV_NODES:
        make_node(f"{dev}/{name}", major, minor)
    make_mountpoint(dev + "/pts")
    flags = MS_NOSUID | MS_NOEXEC
    options = "newinstance,ptmxmode=0666,mode=0620,gid=5"
    mount("devpts", dev + "/pts", "devpts", flags, options)
    for name, link in DEV_LINKS:
        symlink(link, f"{dev}/{name}")
    make_mountpoint(dev + "/shm")
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    mount("tmpfs", dev + "/shm", "tmpfs", flags, "mode=1777,size=65536k")


def make_node(path, major, minor):
    try:
        os.mknod(path, 0o20666, os.makedev(major, minor))
    except OSError as err:
        raise os_error(f"create device node {path}", err.errno) from err


def symlink(link, path):
    try:
        os.symlink(link, path)
    except OSError as err:
        raise os_error(f"create symlink {path}", err.errno) from err


def clone_bind_sources(bind_files, init_path):
    """Detached bind mounts of the host files, by container path; the init
    program's is read-only."""
    sources = {}
    for path, host_path in bind_files.items():
        sources[path] = clone_tree(host_path, path)
    if init_path is not None:
        tree_fd = clone_tree(init_path, INIT_TARGET)
        sources[INIT_TARGET] = tree_fd
        what = f"make the init program {INIT_TARGET} read-only"
        set_mount_attr(tree_fd, b"", AT_EMPTY_PATH, MOUNT_ATTR_RO_NOSUID_NODEV, what)
    return sources


def clone_tree(host_path, path):
    result = syscall(
        SYS_OPEN_TREE,
        ctypes.c_int(AT_FDCWD),
        encode(host_path),
        ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC),
    )
    return check(result, f"bind-mount {host_path} on {path}")


def attach_bind_files(sources):
    for path, tree_fd in sources.items():
        make_dirs(os.path.dirname(path))
        make_file(path)
        result = syscall(
            SYS_MOVE_MOUNT,
            ctypes.c_int(tree_fd),
            b"",
            ctypes.c_int(AT_FDCWD),
            encode(path),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        )
        check(result, f"bind-mount a host file on {path}")
        os.close(tree_fd)


def make_file(path):
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    except OSError as err:
        raise os_error(f"create {path} in the container", err.errno) from err


def make_dirs(path):
    try:
        os.makedirs(path, 0o755, exist_ok=True)
    except OSError as err:
        raise os_error(f"create directory {path} in the container", err.errno) from err


def set_hostname(hostname):
    try:
        _socket.sethostname(hostname)
    except OSError as err:
        raise os_error(f'set hostname "{hostname}"', err.errno) from err


def bring_up_loopback():
    import fcntl

    name = b"lo".ljust(16, b"\0")
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        ifreq = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, name + bytes(24))
        flags = int.from_bytes(ifreq[16:18], sys.byteorder) | IFF_UP
        ifreq = name + flags.to_bytes(2, sys.byteorder) + bytes(22)
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, ifreq)
    except OSError as err:
        raise os_error("bring up lo in the container's network", err.errno) from err
    finally:
        sock.close()


def pivot_root(root):
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise SetupError(f"pivot_root: unsupported architecture {os.uname().machine}")

    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)

    os.chdir(root)

    # pivot_root(".", ".") stacks the old root on top of the new one, so no
    # directory for it is needed in the image.
    check(syscall(number, b".", b"."), f"pivot_root into {root}")

    os.fchdir(old_root)

    check(_libc.umount2(b".", MNT_DETACH), "detach the host's root")

    os.close(old_root)

    os.chdir("/")


def resolve_user(spec_user):
    """(uid, gid, supplementary gids) for Docker's --user forms."""
    user, _, group = spec_user.partition(":")
    user = user or "0"
    entry = find_entry("/etc/passwd", user)
    if entry is not None:
        uid, gid = parse_id(entry[2], user), parse_id(entry[3], user)
    elif is_number(user):
        uid, gid = parse_id(user, user), 0
    else:
        raise SetupError(
            f"unable to find user {user}: no matching entries in passwd file"
        )
    if group:
        return uid, group_id(group), []
    if entry is None:
        return uid, gid, []
    return uid, gid, member_groups(entry[0])


def group_id(group):
    entry = find_entry("/etc/group", group)
    if entry is not None:
        return parse_id(entry[2], group)
    if is_number(group):
        return parse_id(group, group)
    raise SetupError(f"unable to find group {group}: no matching entries in group file")


def member_groups(user_name):
    gids = []
    for fields in read_entries("/etc/group"):
        if len(fields) >= 4 and user_name in fields[3].split(","):
            gids.append(parse_id(fields[2], fields[0]))
    return gids


def find_entry(path, name_or_id):
    """The first passwd/group entry whose name or numeric id matches."""
    for fields in read_entries(path):
        if len(fields) >= 4 and name_or_id in (fields[0], fields[2]):
            return fields
    return None


def read_entries(path):
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as file:
            return [line.rstrip("\n").split(":") for line in file]
    except FileNotFoundError:
        return []
    except OSError as err:
        raise os_error(f"read {path} in the container", err.errno) from err


def is_number(text):
    return text.isascii() and text.isdigit()


def parse_id(text, owner):
    if not is_number(text) or int(text) > 0xFFFFFFFE:
        raise SetupError(f'invalid id "{text}" for {owner}: not a number below 2^32-1')
    return int(text)


def drop_privileges(uid, gid, groups):
    try:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
    except OSError as err:
        raise os_error(f"switch to user {uid}:{gid}", err.errno) from err


def change_dir(cwd):
    try:
        os.chdir(cwd)
    except OSError as err:
        raise os_error(f"change to working directory {cwd}", err.errno) from err


def exec_command(args, env, init=None):
    environment = dict(entry.split("=", 1) for entry in env)
    path = find_executable(args[0], environment.get("PATH", DEFAULT_PATH))
    if init is not None:
        # The init looks the command up again; looking it up here as well
        # makes a missing one fail the start with the usual message.
        path, args = init, [init, "--", *args]

    # Everything but 0, 1 and 2 closes at exec, the status pipe included.
    check(
        syscall(
            SYS_CLOSE_RANGE, 3, ctypes.c_uint(~0 & 0xFFFFFFFF), CLOSE_RANGE_CLOEXEC
        ),
        "mark descriptors close-on-exec",
    )

    os.umask(0o022)

    # Ignored signals survive exec: Python ignores SIGPIPE and SIGXFSZ at
    # startup, and whatever started the daemon may have ignored others.
    reset_ignored_signals()

    try:
        os.execve(path, args, environment)
    except OSError as err:
        code = EXIT_NOT_FOUND if err.errno == ENOENT else EXIT_CANNOT_EXEC
        raise exec_error(args[0], err.strerror, code) from err


def reset_ignored_signals():
    """Give every ignored signal its default action again.

    The raw system call, because glibc refuses to touch the two real-time
    signals it keeps for itself (32 and 33), which a parent may still have
    set to SIG_IGN.
    """
    number = SYS_RT_SIGACTION[os.uname().machine]
    action = (ctypes.c_ulong * 4)()  # handler SIG_DFL, flags, restorer, mask
    for sig in ignored_signals():
        check(
            syscall(number, sig, ctypes.byref(action), None, SIGSET_BYTES),
            f"reset the action of signal {sig}",
        )


def ignored_signals():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("SigIgn:"):
                mask = int(line.split()[1], 16)
                return [bit + 1 for bit in range(64) if mask >> bit & 1]
    return []


def find_executable(name, search_path):
    """Resolve the command as Go's exec.LookPath does inside runc."""
    if "/" in name:
        problem = executable_problem(name)
        if problem is None:
            return name
        raise exec_error(name, *problem)
    for directory in search_path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if executable_problem(candidate) is None:
            return candidate
    raise exec_error(name, "executable file not found in $PATH", EXIT_NOT_FOUND)


def executable_problem(path):
    """None if path is an executable file, else (reason, exit code)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        return f"stat {path}: {err.strerror.lower()}", EXIT_NOT_FOUND
    if mode & 0o170000 == 0o040000:
        return "is a directory", EXIT_CANNOT_EXEC
    if not mode & 0o111:
        return "permission denied", EXIT_CANNOT_EXEC
    return None


def exec_error(name, reason, code):
    return SetupError(f'exec: "{name}": {reason[:1].lower()}{reason[1:]}', code)


# ---- server mode ------------------------------------------------------------

REQUEST_MAX_BYTES = 4096
REQUEST_MAX_FDS = 8


def serve(socket_fd):
    """Fork a helper for each request until the daemon closes its end."""
    # Imported once here, not in each helper: exec mode needs select and a
    # container without a network fcntl; the server needs the others.
    import fcntl  # noqa: F401
    import gc
    import select  # noqa: F401
    import socket

    sock = socket.socket(fileno=socket_fd)
    # The objects that exist now are never collected, so neither the server
    # nor a helper writes to their pages and the two share them longer.
    gc.freeze()
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(
                sock, REQUEST_MAX_BYTES, REQUEST_MAX_FDS
            )
        except ConnectionResetError:
            data = b""
        if not data:
            os._exit(0)
        try:
            reply = handle_request(data, fds, flags & socket.MSG_CTRUNC)
        finally:
            for fd in fds:
                os.close(fd)
        try:
            sock.send(reply)
        except OSError:
            # The daemon is gone; so is whoever would read the next request.
            os._exit(0)


def handle_request(data, fds, truncated):
    """The reply to one request: the pid of the helper forked for it, or
    why there is none."""
    try:
        mode, wanted, spec_fd, status_fd = parse_request(data, fds, truncated)
        pid = fork_detached(mode, wanted, spec_fd, status_fd)
    except SetupError as err:
        message = _json.encode_basestring_ascii(str(err)[:2000])
        return f'{{"error": {message}}}'.encode()
    return b'{"pid": %d}' % pid


def parse_request(data, fds, truncated):
    """The mode, the fds by the number each gets in the helper, and the
    spec and status fds' numbers."""
    import json

    try:
        request = json.loads(data)
        mode, numbers = request["mode"], request["fds"]
        if mode not in MODES or truncated or len(fds) != len(numbers) + 2:
            raise ValueError(mode)
        if len(numbers) < 2 or len(set(numbers)) != len(numbers):
            raise ValueError(numbers)
        if not all(type(number) is int and number > 2 for number in numbers):
            raise ValueError(numbers)
    except (ValueError, KeyError, TypeError):
        raise SetupError(
            f"the helper server got a malformed request: {data[:200]!r} "
            f"with {len(fds)} fds; check that corrald and the helper come "
            "from one corral installation"
        ) from None
    wanted = {1: fds[0], 2: fds[1], **dict(zip(numbers, fds[2:], strict=True))}
    return mode, wanted, numbers[0], numbers[1]


def fork_detached(mode, wanted, spec_fd, status_fd):
    """Fork the helper through a child that exits at once; the helper's
    pid, once it is the daemon's child."""
    pid_read, pid_write = os.pipe2(os.O_CLOEXEC)
    try:
        child = os.fork()
    except OSError as err:
        os.close(pid_read)
        os.close(pid_write)
        raise os_error("fork the helper", err.errno) from err
    if child == 0:
        try:
            fork_helper(pid_write, mode, wanted, spec_fd, status_fd)
        finally:
            os._exit(EXIT_SETUP)
    os.close(pid_write)
    # Reaped, the child has handed the helper to the daemon, the subreaper.
    _, status = os.waitpid(child, 0)
    message = os.read(pid_read, 4096).decode()
    os.close(pid_read)
    if message.isdigit():
        return int(message)
    if not message:
        code = os.waitstatus_to_exitcode(status)
        message = f"the helper server's child exited with {code} before forking"
    raise SetupError(message)


def fork_helper(pid_write, mode, wanted, spec_fd, status_fd):
    """In the server's child: fork the helper, write its pid, and exit."""
    try:
        pid = os.fork()
    except OSError as err:
        os.write(pid_write, str(os_error("fork the helper", err.errno)).encode())
        os._exit(0)
    if pid == 0:
        try:
            run_forked_helper(mode, wanted, spec_fd, status_fd)
        finally:
            os._exit(EXIT_SETUP)
    os.write(pid_write, b"%d" % pid)
    os._exit(0)


def run_forked_helper(mode, wanted, spec_fd, status_fd):
    """Run as the helper started on its own would, with the request's fds."""
    os.setsid()

    try:
        wanted[0] = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        place_fds(wanted)
    except OSError as err:
        # Opening and copying fail, if anything does, before any fd moved.
        fail(wanted[status_fd], os_error("set up the helper's fds", err.errno))
    except SetupError as err:
        fail(status_fd, err)

    run_helper(mode, spec_fd, status_fd)


def place_fds(wanted):
    """Put each fd at its number ({number: fd}) and close every other fd."""
    import fcntl

    # Copies above every number in play first, so that putting one fd at its
    # number never overwrites another that is still to be placed.
    top = max(*wanted, *wanted.values()) + 1
    copies = {
        number: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top)
        for number, fd in wanted.items()
    }
    for number, fd in copies.items():
        os.dup2(fd, number)
    first = 0
    for number in sorted(copies):
        if number > first:
            close_range(first, number - 1)
        first = number + 1
    close_range(first, 0xFFFFFFFF)


def close_range(first, last):
    result = syscall(
        SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(0)
    )
    check(result, "close the server's fds in the helper")


if __name__ == "__main__":
    main(sys.argv[1:])
