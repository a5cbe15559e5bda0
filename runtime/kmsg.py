"""Which process the kernel OOM-killed, from its log (/dev/kmsg).

The cgroup counters say that a kill happened, not whom it hit. The kernel
logs one summary record per OOM kill before it raises the counters:

    6,812,90412345,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),
    cpuset=/,mems_allowed=0,oom_memcg=/corral/ID,task_memcg=/corral/ID,
    task=dd,pid=4242,uid=0

(one line; the pid is the host pid). Each open of /dev/kmsg reads the log
on its own from where it seeks to, so corral reads only records written
after it started and disturbs no other reader. Reads are non-blocking; a
record that was overwritten before it was read (EPIPE) is skipped. Where
/dev/kmsg cannot be read (a container without it, dmesg_restrict without
CAP_SYSLOG), kills are still counted, only their pid is unknown.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

KMSG = "/dev/kmsg"
_SUMMARY = re.compile(r"oom-kill:(?P<fields>[^\n]*)")
# The task name comes last but for pid and uid, and may hold spaces or commas.
_VICTIM = re.compile(r",task=(?P<task>.*),pid=(?P<pid>\d+),uid=\d+\s*$")
_MAX_RECORDS = 256  # kept in memory, newest last


@dataclass(frozen=True)
class OomKillRecord:
    pid: int
    task: str
    memcg: str  # the cgroup of the killed task, as the kernel names it


def parse_record(line: str) -> OomKillRecord | None:
    """The OOM kill described by one /dev/kmsg record, or None."""
    _, sep, message = line.partition(";")
    match = _SUMMARY.search(message if sep else line)
    if match is None:
        return None
    text = match.group("fields")
    victim = _VICTIM.search(text)
    if victim is None:
        return None
    fields = dict(item.partition("=")[::2] for item in text[: victim.start()].split(","))
    memcg = fields.get("task_memcg") or fields.get("oom_memcg") or ""
    return OomKillRecord(pid=int(victim["pid"]), task=victim["task"], memcg=memcg)


class KernelLog:
    """OOM kill records from the kernel log, read without blocking."""

    def __init__(self, path: str = KMSG):
        self.records: list[OomKillRecord] = []
        try:
            self.fd: int | None = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as err:
            self.fd = None
            self.error = f"cannot read {path} ({os.strerror(err.errno).lower()})"
        else:
            self.error = ""

    def read(self) -> None:
        """Take in every record written since the last read."""
        while self.fd is not None:
            try:
                data = os.read(self.fd, 8192)
            except BlockingIOError:
                return
            except BrokenPipeError:
                continue  # records were overwritten before we read them
            if not data:
                return
            record = parse_record(data.decode("utf-8", "replace"))
            if record is not None:
                self.records.append(record)
                del self.records[:-_MAX_RECORDS]

    def take(self, cgroup_name: str) -> list[OomKillRecord]:
        """Remove and return the records of kills in the cgroup whose last
        path component is ``cgroup_name`` (a container id)."""
        self.read()
        mine = [r for r in self.records if r.memcg.rsplit("/", 1)[-1] == cgroup_name]
        self.records = [r for r in self.records if r not in mine]
        return mine

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
