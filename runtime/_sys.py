"""Daemon-side system calls the standard library does not wrap.

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
