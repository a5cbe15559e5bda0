"""Waiting on processes and pipes from trio: pidfds, no polling."""

import os

import trio

from runtime import process as rt_process

READ_BYTES = 64 * 1024


async def read_to_eof(fd: int) -> bytes:
    chunks = []
    try:
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, READ_BYTES)
            except BlockingIOError:
                continue
            if not data:
                return b"".join(chunks)
            chunks.append(data)
    finally:
        os.close(fd)


async def wait_process(popen) -> None:
    pidfd = os.pidfd_open(popen.pid)
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    popen.wait()


async def reap(pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
        rt_process.exit_status(pidfd)
    finally:
        os.close(pidfd)
