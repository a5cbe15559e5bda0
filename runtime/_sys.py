"""Daemon-side system calls the standard library does not wrap: the child
subreaper flag and inotify.

A child subreaper adopts the orphaned descendants of its children instead of
init. corrald needs it: the init helper exits right after forking the
container's PID 1, and only a parent can wait on a process (also through a
pidfd, which os.pidfd_open provides). The flag belongs to one process: fork
does not pass it on, exec keeps it.
"""

import ctypes

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

_libc = ctypes.CDLL(None, use_errno=True)


def set_child_subreaper() -> None:
    """Make orphaned descendants of this process its children."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "cannot become a child subreaper (prctl)")


def is_child_subreaper() -> bool:
    value = ctypes.c_int(0)
    if _libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "cannot read the child subreaper flag (prctl)")
    return value.value != 0


# inotify: the kernel queues one event per change of a watched file; cgroupfs
# raises IN_MODIFY on files such as memory.events and cgroup.events when
# their content changes, though nobody wrote to them.
IN_MODIFY = 0x00000002
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000


def inotify_init() -> int:
    """A new non-blocking, close-on-exec inotify descriptor."""
    fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "cannot create an inotify instance (inotify_init1)")
    return fd


def inotify_add_watch(fd: int, path: str, mask: int = IN_MODIFY) -> int:
    """Watch `path` for the events in `mask`; returns the watch descriptor."""
    wd = _libc.inotify_add_watch(fd, path.encode(), mask)
    if wd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"cannot watch {path} (inotify_add_watch)", path)
    return wd
