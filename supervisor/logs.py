"""Per-container logs in Docker's json-file format, bounded by rotation.

Each line of a container's output becomes one JSON object
{"log": "<line>\\n", "stream": "stdout"|"stderr", "time": "<RFC 3339 ns>"}.
When the file would pass max_size_bytes it is renamed to NAME.1 (older ones
shift up, the oldest beyond max_files is deleted), so a container never uses
more than about max_size_bytes * max_files of disk.

Followers park on the writer's ParkingLot and are woken by every write, by
rotation and when the container stops for good; trio runs writer and
followers on one thread, so checking and parking cannot race.
"""

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import trio

PARTIAL_LINE_FLUSH_BYTES = 16 * 1024
DEFAULT_MAX_SIZE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_FILES = 5


@dataclass
class LogEntry:
    stream: str
    data: bytes
    time: str
    time_ns: int


def format_time_ns(time_ns: int) -> str:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def parse_time_ns(text: str) -> int:
    """Parse an RFC 3339 UTC time with up to nanosecond precision."""
    main, _, frac = text.rstrip("Z").partition(".")
    seconds = time.mktime(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return int(seconds) * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])


class LogWriter:
    def __init__(self, path: Path, max_size_bytes: int, max_files: int):
        self.path = path
        self.max_size_bytes = max_size_bytes
        self.max_files = max_files
        self.generation = 0
        self.lot = trio.lowlevel.ParkingLot()
        self._fd: int | None = None
        self._size = 0

    def write(self, stream: str, data: bytes) -> None:
        entry = {
            "log": data.decode("utf-8", "replace"),
            "stream": stream,
            "time": format_time_ns(time.time_ns()),
        }
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        self._ensure_open()
        if self._size and self._size + len(line) > self.max_size_bytes:
            self._rotate()
        os.write(self._fd, line)
        self._size += len(line)
        self.lot.unpark_all()

    def wake(self) -> None:
        self.lot.unpark_all()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _ensure_open(self) -> None:
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o640)
            self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        self.close()
        for n in range(self.max_files - 1, 0, -1):
            older = rotated_path(self.path, n)
            if n == self.max_files - 1:
                older.unlink(missing_ok=True)
            newer = rotated_path(self.path, n - 1)
            if newer.exists():
                newer.rename(older)
        if self.max_files == 1:
            self.path.unlink(missing_ok=True)
        self.generation += 1
        self._ensure_open()


def rotated_path(path: Path, n: int) -> Path:
    return path if n == 0 else path.with_name(f"{path.name}.{n}")


class LineSplitter:
    """Cuts a byte stream into lines; long partial lines are flushed in pieces."""

    def __init__(self):
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._pending + data
        lines = buf.split(b"\n")
        self._pending = lines.pop()
        out = [line + b"\n" for line in lines]
        while len(self._pending) >= PARTIAL_LINE_FLUSH_BYTES:
            out.append(self._pending[:PARTIAL_LINE_FLUSH_BYTES])
            self._pending = self._pending[PARTIAL_LINE_FLUSH_BYTES:]
        return out

    def flush(self) -> list[bytes]:
        rest, self._pending = self._pending, b""
        return [rest] if rest else []


def parse_line(line: bytes) -> LogEntry | None:
    try:
        doc = json.loads(line)
        stamp = doc["time"]
        return LogEntry(doc["stream"], doc["log"].encode(), stamp, parse_time_ns(stamp))
    except (ValueError, KeyError, TypeError):
        return None


class LogSnapshot:
    """A container's log files as they are at one moment, to be read in a
    worker thread while the container goes on writing.

    Made on the event loop: it opens every file at once, so a rotation
    afterwards changes nothing it reads, and it reads the current file only
    up to `end`, its size now (a Follower opened at the same moment starts
    there). Reading a large log never holds the event loop: `tail` reads
    backwards from the end, and `batches` yields the entries a few thousand
    at a time, for the caller to send as it goes.
    """

    BATCH = 4096
    BLOCK_BYTES = 64 * 1024

    def __init__(self, path: Path, max_files: int, end: int | None = None):
        self._files: list[tuple[object, int]] = []  # oldest first, with the byte limit
        for n in range(max_files - 1, -1, -1):
            try:
                f = open(rotated_path(path, n), "rb")
            except FileNotFoundError:
                continue
            limit = os.fstat(f.fileno()).st_size
            if n == 0 and end is not None:
                limit = min(limit, end)
            self._files.append((f, limit))

    def batches(self):
        """The entries, oldest first, in lists of at most BATCH."""
        batch = []
        for f, limit in self._files:
            f.seek(0)
            left = limit
            while left > 0:
                line = f.readline(left)
                if not line:
                    break
                left -= len(line)
                entry = parse_line(line)
                if entry is not None:
                    batch.append(entry)
                    if len(batch) >= self.BATCH:
                        yield batch
                        batch = []
        if batch:
            yield batch

    def tail(self, count: int) -> list[LogEntry]:
        """The last `count` entries, oldest first, read from the end."""
        found: list[LogEntry] = []
        for f, limit in reversed(self._files):
            if len(found) >= count:
                break
            for line in _lines_backwards(f, limit, self.BLOCK_BYTES):
                entry = parse_line(line)
                if entry is not None:
                    found.append(entry)
                    if len(found) >= count:
                        break
        found.reverse()
        return found

    def close(self) -> None:
        for f, _ in self._files:
            f.close()
        self._files = []


def _lines_backwards(f, end: int, block_bytes: int):
    """The lines of f's first `end` bytes, last first."""
    position = end
    rest = b""
    while position > 0:
        start = max(0, position - block_bytes)
        f.seek(start)
        data = f.read(position - start) + rest
        position = start
        lines = data.split(b"\n")
        rest = lines.pop(0)  # may continue in the block before
        for line in reversed(lines):
            if line:
                yield line + b"\n"
    if rest:
        yield rest


class Follower:
    """Reads new entries from the current log file as they are written."""

    def __init__(self, writer: LogWriter):
        self.writer = writer
        self.generation = writer.generation
        self._file = self._open_at_end()

    @property
    def position(self) -> int | None:
        """Where in the current file it reads on from, if it has it open."""
        return self._file.tell() if self._file is not None else None

    def _open_at_end(self):
        try:
            f = open(self.writer.path, "rb")
        except FileNotFoundError:
            return None
        f.seek(0, os.SEEK_END)
        return f

    def read_new(self) -> list[LogEntry]:
        entries = self._drain()
        if self.writer.generation != self.generation:
            self.generation = self.writer.generation
            self.close()
            try:
                self._file = open(self.writer.path, "rb")
            except FileNotFoundError:
                self._file = None
            entries += self._drain()
        elif self._file is None:
            self._file = self._open_from_start()
            entries += self._drain()
        return entries

    def _open_from_start(self):
        try:
            return open(self.writer.path, "rb")
        except FileNotFoundError:
            return None

    def _drain(self) -> list[LogEntry]:
        if self._file is None:
            return []
        out = []
        for line in self._file.readlines():
            entry = parse_line(line)
            if entry is not None:
                out.append(entry)
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
