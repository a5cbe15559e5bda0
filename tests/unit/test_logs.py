import json

from supervisor.logs import (
    PARTIAL_LINE_FLUSH_BYTES,
    Follower,
    LineSplitter,
    LogWriter,
    format_time_ns,
    parse_time_ns,
    read_entries,
    rotated_path,
)


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
