import json

from supervisor.logs import (
    PARTIAL_LINE_FLUSH_BYTES,
    Follower,
    LineSplitter,
    LogSnapshot,
    LogWriter,
    format_time_ns,
    parse_time_ns,
    rotated_path,
)


def read_entries(path, max_files: int, tail: int | None) -> list:
    """Every entry of the rotated files, oldest first, or the last `tail`."""
    snapshot = LogSnapshot(path, max_files)
    try:
        if tail is not None:
            return snapshot.tail(tail)
        return [entry for batch in snapshot.batches() for entry in batch]
    finally:
        snapshot.close()


def test_time_round_trips_with_nanoseconds():
    stamp = 1_700_000_000_123_456_789
    assert format_time_ns(stamp) == "2023-11-14T22:13:20.123456789Z"
    assert parse_time_ns(format_time_ns(stamp)) == stamp


def test_splitter_keeps_partial_lines_until_complete():
    s = LineSplitter()
    assert s.feed(b"a\nb") == [b"a\n"]
    assert s.feed(b"c\n") == [b"bc\n"]
    assert s.feed(b"tail") == []
    assert s.flush() == [b"tail"]


def test_splitter_flushes_very_long_lines_in_pieces():
    s = LineSplitter()
    out = s.feed(b"x" * (PARTIAL_LINE_FLUSH_BYTES + 10))
    assert out == [b"x" * PARTIAL_LINE_FLUSH_BYTES]
    assert s.flush() == [b"x" * 10]


def test_writer_writes_docker_json_file_lines(tmp_path):
    w = LogWriter(tmp_path / "c.log", 1 << 20, 3)
    w.write("stdout", b"hello\n")
    w.write("stderr", b"oops\n")
    w.close()
    docs = [json.loads(line) for line in (tmp_path / "c.log").read_text().splitlines()]
    assert [(d["stream"], d["log"]) for d in docs] == [("stdout", "hello\n"), ("stderr", "oops\n")]
    assert docs[0]["time"].endswith("Z")


def test_rotation_bounds_the_files_and_keeps_the_newest(tmp_path):
    path = tmp_path / "c.log"
    w = LogWriter(path, 2048, 3)
    for n in range(200):
        w.write("stdout", f"line {n}\n".encode())
    w.close()
    files = sorted(tmp_path.iterdir())
    assert files == [path, rotated_path(path, 1), rotated_path(path, 2)]
    assert all(f.stat().st_size <= 2048 for f in files)
    entries = read_entries(path, 3, None)
    assert entries[-1].data == b"line 199\n"
    numbers = [int(e.data.split()[1]) for e in entries]
    assert numbers == sorted(numbers)


def test_tail_returns_the_last_lines_across_rotated_files(tmp_path):
    path = tmp_path / "c.log"
    w = LogWriter(path, 1024, 5)
    for n in range(100):
        w.write("stdout", f"{n}\n".encode())
    assert [e.data for e in read_entries(path, 5, 3)] == [b"97\n", b"98\n", b"99\n"]


def test_a_tail_longer_than_a_read_block_spans_blocks_and_files(tmp_path):
    path = tmp_path / "c.log"
    w = LogWriter(path, 4096, 4)
    for n in range(300):
        w.write("stdout", f"{n} {'x' * (n % 50)}\n".encode())
    snapshot = LogSnapshot(path, 4)
    snapshot.BLOCK_BYTES = 100  # many blocks, lines cut at their edges
    every = [e.data for batch in LogSnapshot(path, 4).batches() for e in batch]

    tail = [e.data for e in snapshot.tail(60)]

    assert tail == every[-60:]
    assert int(tail[-1].split()[0]) == 299
    assert [e.data for e in snapshot.tail(10_000)] == every


def test_a_snapshot_reads_the_current_file_only_up_to_its_end_and_survives_rotation(
    tmp_path,
):
    path = tmp_path / "c.log"
    w = LogWriter(path, 1024, 3)
    for n in range(5):
        w.write("stdout", f"{n}\n".encode())
    follower = Follower(w)
    snapshot = LogSnapshot(path, 3, follower.position)
    for n in range(5, 200):  # rotates several times: the snapshot's files are open
        w.write("stdout", f"{n}\n".encode())

    seen = [e.data for batch in snapshot.batches() for e in batch]
    later = [e.data for e in follower.read_new()]

    assert seen == [f"{n}\n".encode() for n in range(5)]
    assert later[0] == b"5\n"


def test_batches_bound_how_many_entries_come_at_once(tmp_path):
    path = tmp_path / "c.log"
    w = LogWriter(path, 1 << 20, 2)
    for n in range(10_000):
        w.write("stdout", b"x\n")
    sizes = [len(batch) for batch in LogSnapshot(path, 2).batches()]
    assert max(sizes) == LogSnapshot.BATCH and sum(sizes) == 10_000


def test_follower_sees_lines_written_after_it_opened_and_across_rotation(tmp_path):
    path = tmp_path / "c.log"
    w = LogWriter(path, 1024, 3)
    w.write("stdout", b"before\n")
    f = Follower(w)
    assert f.read_new() == []
    w.write("stdout", b"after\n")
    assert [e.data for e in f.read_new()] == [b"after\n"]
    for n in range(40):
        w.write("stdout", f"r{n}\n".encode())
    seen = [e.data for e in f.read_new()]
    assert seen[-1] == b"r39\n"
    f.close()
