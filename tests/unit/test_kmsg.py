"""Who the kernel OOM-killed, as read from /dev/kmsg records.

Records are written the way the kernel prints them ("prefix;message", one
record per read). Where a file stands in for /dev/kmsg, one record is
appended before each read, as the kernel hands out one record per read.
"""

import pytest

from runtime.kmsg import KernelLog, OomKillRecord, parse_record

SUMMARY = (
    "6,812,90412345,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),"
    "cpuset=/,mems_allowed=0,oom_memcg=/corral/abc,task_memcg=/corral/abc,"
    "task=dd,pid=4242,uid=0"
)


def summary(*, task="dd", pid="4242", memcg="/corral/abc", prefix="6,812,90412345,-"):
    return (
        f"{prefix};oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
        f"mems_allowed=0,oom_memcg={memcg},task_memcg={memcg},task={task},"
        f"pid={pid},uid=0\n"
    )


# ---- parse_record ----------------------------------------------------------


def test_the_oom_kill_summary_gives_pid_task_and_cgroup():
    assert parse_record(SUMMARY) == OomKillRecord(
        pid=4242, task="dd", memcg="/corral/abc"
    )


def test_a_summary_with_continuation_lines_is_read_from_its_first_line():
    record = SUMMARY + "\n SUBSYSTEM=memory\n DEVICE=+memory:abc\n"

    assert parse_record(record) == OomKillRecord(4242, "dd", "/corral/abc")


def test_a_summary_with_a_caller_id_in_its_prefix_is_read():
    record = summary(prefix="6,812,90412345,-,caller=T4242")

    assert parse_record(record) == OomKillRecord(4242, "dd", "/corral/abc")


def test_a_summary_as_dmesg_prints_it_without_the_kmsg_prefix_is_read():
    line = "[ 9041.234567] " + SUMMARY.partition(";")[2]

    assert parse_record(line) == OomKillRecord(4242, "dd", "/corral/abc")


def test_a_summary_on_a_host_with_several_memory_nodes_is_read():
    record = SUMMARY.replace("mems_allowed=0", "mems_allowed=0,2").replace(
        "nodemask=(null)", "nodemask=0-1"
    )

    assert parse_record(record) == OomKillRecord(4242, "dd", "/corral/abc")


def test_the_killed_task_cgroup_is_preferred_to_the_cgroup_that_ran_out():
    record = SUMMARY.replace("task_memcg=/corral/abc", "task_memcg=/corral/abc/sub")

    assert parse_record(record).memcg == "/corral/abc/sub"


def test_without_the_task_cgroup_the_cgroup_that_ran_out_is_taken():
    record = SUMMARY.replace("task_memcg=/corral/abc,", "")

    assert parse_record(record) == OomKillRecord(4242, "dd", "/corral/abc")


def test_a_task_name_with_a_space_keeps_its_pid():
    # A task's name (comm) may hold spaces: Firefox's "Web Content", or any
    # name a process sets with prctl(PR_SET_NAME).
    record = summary(task="Web Content", pid="4242")

    assert parse_record(record) == OomKillRecord(4242, "Web Content", "/corral/abc")


@pytest.mark.parametrize(
    "record",
    [
        (
            "3,813,90412400,-;Memory cgroup out of memory: Killed process 4242 (dd) "
            "total-vm:1056300kB, anon-rss:1048064kB, file-rss:1024kB, "
            "shmem-rss:0kB, UID:0 pgtables:2108kB oom_score_adj:0"
        ),
        (
            "4,811,90412300,-;dd invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), "
            "order=0, oom_score_adj=0"
        ),
        "6,814,90412500,-;memory: usage 1048576kB, limit 1048576kB, failcnt 42",
        (
            "6,815,90412600,-;oom_reaper: reaped process 4242 (dd), now "
            "anon-rss:0kB, file-rss:0kB, shmem-rss:0kB"
        ),
        "",
    ],
    ids=["killed-process", "invoked-oom-killer", "memory-usage", "oom-reaper", "empty"],
)
def test_records_other_than_the_oom_kill_summary_give_nothing(record):
    assert parse_record(record) is None


@pytest.mark.parametrize("pid", ["abc", "", "42x", "-"])
def test_a_summary_with_a_malformed_pid_gives_nothing(pid):
    assert parse_record(summary(pid=pid)) is None


def test_a_summary_without_a_pid_gives_nothing():
    assert parse_record(SUMMARY.replace(",pid=4242", "")) is None


# ---- KernelLog -------------------------------------------------------------


def test_a_kernel_log_that_cannot_be_opened_says_why(tmp_path):
    path = tmp_path / "kmsg"

    log = KernelLog(str(path))

    assert log.error == f"cannot read {path} (no such file or directory)"
    assert log.take("abc") == []
    log.close()


def test_a_kernel_log_that_opened_has_no_error(tmp_path):
    path = tmp_path / "kmsg"
    path.write_text("")

    log = KernelLog(str(path))

    assert log.error == ""
    log.close()


def test_take_returns_only_records_of_the_named_cgroup_and_removes_them(tmp_path):
    log = KernelLog(str(tmp_path / "kmsg"))
    mine = [
        OomKillRecord(4242, "dd", "/corral/abc"),
        OomKillRecord(4250, "sh", "/system.slice/corral.service/abc"),
    ]
    others = [
        OomKillRecord(777, "dd", "/corral/abcd"),
        OomKillRecord(778, "dd", "/corral/abc/sub"),
        OomKillRecord(779, "dd", "/abc/corral/xyz"),
        OomKillRecord(780, "dd", "/corral/xabc"),
    ]
    log.records = [others[0], mine[0], others[1], mine[1], *others[2:]]

    assert log.take("abc") == mine
    assert log.records == others
    assert log.take("abc") == []


def test_take_reads_only_records_written_after_the_log_was_opened(tmp_path):
    path = tmp_path / "kmsg"
    path.write_text(summary(pid="100"))
    log = KernelLog(str(path))

    with path.open("a") as kmsg:
        kmsg.write(summary(pid="200"))

    assert log.take("abc") == [OomKillRecord(200, "dd", "/corral/abc")]
    log.close()


def test_read_skips_records_that_are_not_oom_kill_summaries(tmp_path):
    path = tmp_path / "kmsg"
    path.write_text("")
    log = KernelLog(str(path))

    for line in ("4,811,1,-;dd invoked oom-killer: gfp_mask=0xcc0\n", summary()):
        with path.open("a") as kmsg:
            kmsg.write(line)
        log.read()

    assert log.records == [OomKillRecord(4242, "dd", "/corral/abc")]
    log.close()


def test_the_kernel_log_keeps_only_the_newest_256_records(tmp_path):
    path = tmp_path / "kmsg"
    path.write_text("")
    log = KernelLog(str(path))

    for pid in range(1, 301):
        with path.open("a") as kmsg:
            kmsg.write(summary(pid=str(pid)))
        log.read()

    assert [r.pid for r in log.records] == list(range(45, 301))
    log.close()


def test_a_closed_kernel_log_reads_nothing_more(tmp_path):
    path = tmp_path / "kmsg"
    path.write_text("")
    log = KernelLog(str(path))
    log.close()

    with path.open("a") as kmsg:
        kmsg.write(summary())

    assert log.take("abc") == []
    log.close()  # closing twice is harmless
