"""RunWatch against a fake cgroup v2 directory under tmp_path.

inotify reports plain writes to regular files as IN_MODIFY, as cgroupfs does
when a counter in memory.events or cgroup.events changes, so the OOM watch
runs unchanged on the fake tree; those tests use the real clock, guarded by
a deadline, because they wait on a real descriptor. Pressure is watched in
"sampling" mode, which reads the "some" totals each window: those tests run
on trio's MockClock, and a feeder task raises the totals between samples.
"""

import math

import pytest
import structlog
import trio
import trio.testing

from runtime.cgroups import CgroupDirs, Layout
from runtime.kmsg import KernelLog, OomKillRecord
from supervisor.pressure import PressureAction, PressureConfig
from supervisor.watchers import OomKill, PressureMode, RunWatch

CONTAINER = "abc"
PID1 = 4242
WINDOW_S = 2.0
SAMPLING = PressureMode("sampling", WINDOW_S)
DEADLINE_S = 5.0  # real seconds; the OOM tests normally take milliseconds


class FakeCgroup:
    """One container's cgroup v2 directory with the files RunWatch reads."""

    def __init__(self, path):
        self.path = path
        self.totals_us = {"cpu": 0, "memory": 0, "io": 0}
        self.avg10 = {"cpu": 0.0, "memory": 0.0, "io": 0.0}
        path.mkdir()
        self.set_memory_events()
        (path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
        for resource in self.totals_us:
            self._write_pressure(resource)

    @property
    def dirs(self) -> CgroupDirs:
        return CgroupDirs(layout=Layout.V2, unified=self.path)

    def set_memory_events(self, *, high=0, max=0, oom=0, oom_kill=0):
        (self.path / "memory.events").write_text(
            f"low 0\nhigh {high}\nmax {max}\noom {oom}\noom_kill {oom_kill}\n"
            "oom_group_kill 0\n"
        )

    def set_populated(self, populated: bool):
        (self.path / "cgroup.events").write_text(
            f"populated {int(populated)}\nfrozen 0\n"
        )

    def stall(self, resource: str, us: int):
        self.totals_us[resource] += us
        self._write_pressure(resource)

    def set_avg10(self, resource: str, avg10: float):
        self.avg10[resource] = avg10
        self._write_pressure(resource)

    def _write_pressure(self, resource: str):
        total, avg10 = self.totals_us[resource], self.avg10[resource]
        (self.path / f"{resource}.pressure").write_text(
            f"some avg10={avg10:.2f} avg60=0.00 avg300=0.00 total={total}\n"
            f"full avg10=0.00 avg60=0.00 avg300=0.00 total={total // 2}\n"
        )


@pytest.fixture
def cgroup(tmp_path):
    return FakeCgroup(tmp_path / "cg")


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def kmsg(tmp_path):
    """A kernel log that could not be opened, filled with records by hand."""
    log = KernelLog(str(tmp_path / "no-kmsg"))
    yield log
    log.close()


def run_watch(
    cgroup, *, kmsg=None, pressure=None, on_oom=None, on_pressure=None, mode=SAMPLING
):
    return RunWatch(
        container_id=CONTAINER,
        pid1=PID1,
        dirs=cgroup.dirs,
        kmsg=kmsg,
        mode=mode,
        pressure=pressure or PressureConfig(),
        on_oom=on_oom or (lambda kills: None),
        on_pressure=on_pressure or (lambda resource, turn, share: None),
    )


# ---- OOM kills: watch_oom --------------------------------------------------


async def start_oom_watch(nursery, cgroup, kmsg=None):
    """A running watch_oom and the channel its reports arrive on."""
    reports_send, reports = trio.open_memory_channel(math.inf)
    watch = run_watch(cgroup, kmsg=kmsg, on_oom=reports_send.send_nowait)
    nursery.start_soon(watch.watch_oom)
    # Its inotify watch is set once it waits: only later writes count.
    await trio.testing.wait_all_tasks_blocked()
    return watch, reports


async def next_report(reports):
    with trio.fail_after(DEADLINE_S):
        return await reports.receive()


async def assert_no_report(reports):
    """Nothing was reported once the watcher handled every notification."""
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(trio.WouldBlock):
        reports.receive_nowait()


async def test_watch_oom_reports_each_kill_with_its_pid_from_the_kernel_log(
    cgroup, kmsg, nursery
):
    _, reports = await start_oom_watch(nursery, cgroup, kmsg)

    kmsg.records.append(OomKillRecord(4250, "dd", f"/corral/{CONTAINER}"))
    cgroup.set_memory_events(max=3, oom=1, oom_kill=1)

    assert await next_report(reports) == [OomKill(pid=4250, pid1=False)]
    await assert_no_report(reports)


async def test_watch_oom_marks_a_kill_of_pid_1(cgroup, kmsg, nursery):
    _, reports = await start_oom_watch(nursery, cgroup, kmsg)

    kmsg.records.append(OomKillRecord(PID1, "app", f"/corral/{CONTAINER}"))
    cgroup.set_memory_events(max=1, oom=1, oom_kill=1)

    assert await next_report(reports) == [OomKill(pid=PID1, pid1=True)]


async def test_watch_oom_reports_one_kill_per_increment_of_oom_kill(
    cgroup, kmsg, nursery
):
    _, reports = await start_oom_watch(nursery, cgroup, kmsg)
    kmsg.records += [
        OomKillRecord(4250, "dd", f"/corral/{CONTAINER}"),
        OomKillRecord(777, "dd", "/corral/other"),
        OomKillRecord(PID1, "app", f"/corral/{CONTAINER}"),
    ]

    cgroup.set_memory_events(max=9, oom=2, oom_kill=2)
    assert await next_report(reports) == [OomKill(4250, False), OomKill(PID1, True)]

    cgroup.set_memory_events(max=12, oom=3, oom_kill=3)
    assert await next_report(reports) == [OomKill(None, None)]

    assert kmsg.records == [OomKillRecord(777, "dd", "/corral/other")]


async def test_watch_oom_without_a_kernel_log_reports_kills_without_pids(
    cgroup, nursery
):
    _, reports = await start_oom_watch(nursery, cgroup, kmsg=None)

    cgroup.set_memory_events(oom=1, oom_kill=2)

    assert await next_report(reports) == [OomKill(None, None), OomKill(None, None)]


async def test_watch_oom_reports_nothing_for_changes_that_kill_nothing(
    cgroup, kmsg, nursery
):
    _, reports = await start_oom_watch(nursery, cgroup, kmsg)

    cgroup.set_memory_events(high=5, max=2)
    await assert_no_report(reports)
    cgroup.set_memory_events(high=6, max=2, oom=1)
    await assert_no_report(reports)

    # Still watching: a kill after all that is reported, once.
    cgroup.set_memory_events(high=6, max=3, oom=2, oom_kill=1)
    assert await next_report(reports) == [OomKill(None, None)]
    await assert_no_report(reports)


async def test_watch_oom_takes_a_last_look_and_ends_once_the_cgroup_is_empty(
    cgroup, kmsg, nursery
):
    _, reports = await start_oom_watch(nursery, cgroup, kmsg)

    # The kill and the emptiness land together: the kill is still reported.
    cgroup.set_memory_events(oom=1, oom_kill=1)
    cgroup.set_populated(False)
    assert await next_report(reports) == [OomKill(None, None)]

    # Nobody is left to kill, and nothing watches any more.
    cgroup.set_memory_events(oom=2, oom_kill=2)
    await assert_no_report(reports)


async def test_check_oom_at_the_end_of_the_run_reports_nothing_already_reported(
    cgroup, kmsg, nursery
):
    watch, reports = await start_oom_watch(nursery, cgroup, kmsg)
    cgroup.set_memory_events(oom=1, oom_kill=1)
    await next_report(reports)

    assert watch.check_oom() is False
    await assert_no_report(reports)


async def test_watch_oom_on_a_missing_cgroup_logs_why_and_returns(tmp_path):
    dirs = CgroupDirs(layout=Layout.V2, unified=tmp_path / "gone")
    watch = RunWatch(
        container_id=CONTAINER,
        pid1=PID1,
        dirs=dirs,
        kmsg=None,
        mode=SAMPLING,
        pressure=PressureConfig(),
        on_oom=lambda kills: None,
        on_pressure=lambda resource, turn, share: None,
    )

    with structlog.testing.capture_logs() as logs, trio.fail_after(DEADLINE_S):
        await watch.watch_oom()

    assert logs == [
        {
            "event": "oom_watch_failed",
            "log_level": "warning",
            "error": f"cannot watch {tmp_path / 'gone' / 'memory.events'} for OOM "
            "kills (no such file or directory); OOM kills of this run are found "
            "only when it exits",
        }
    ]


# ---- OOM kills: check_oom --------------------------------------------------


def test_check_oom_reports_a_kill_not_yet_seen_exactly_once(cgroup, kmsg):
    reports = []
    watch = run_watch(cgroup, kmsg=kmsg, on_oom=reports.append)
    kmsg.records.append(OomKillRecord(PID1, "app", f"/corral/{CONTAINER}"))
    cgroup.set_memory_events(max=1, oom=1, oom_kill=1)

    assert watch.check_oom() is True
    assert watch.check_oom() is False
    assert reports == [[OomKill(PID1, True)]]


def test_check_oom_reports_only_the_kills_since_it_last_looked(cgroup, kmsg):
    reports = []
    watch = run_watch(cgroup, kmsg=kmsg, on_oom=reports.append)
    cgroup.set_memory_events(oom=1, oom_kill=1)
    watch.check_oom()

    kmsg.records.append(OomKillRecord(4250, "dd", f"/corral/{CONTAINER}"))
    cgroup.set_memory_events(oom=3, oom_kill=3)
    watch.check_oom()

    assert reports == [
        [OomKill(None, None)],
        [OomKill(4250, False), OomKill(None, None)],
    ]


def test_check_oom_gives_the_newest_records_when_the_log_holds_more_kills(cgroup, kmsg):
    reports = []
    watch = run_watch(cgroup, kmsg=kmsg, on_oom=reports.append)
    kmsg.records += [
        OomKillRecord(4250, "dd", f"/corral/{CONTAINER}"),
        OomKillRecord(PID1, "app", f"/corral/{CONTAINER}"),
    ]
    cgroup.set_memory_events(oom=1, oom_kill=1)

    watch.check_oom()

    assert reports == [[OomKill(PID1, True)]]


def test_check_oom_reports_nothing_when_nothing_was_killed(cgroup, kmsg):
    reports = []
    watch = run_watch(cgroup, kmsg=kmsg, on_oom=reports.append)
    cgroup.set_memory_events(high=10, max=4, oom=2)

    assert watch.check_oom() is False
    assert reports == []


def test_check_oom_reports_nothing_once_the_cgroup_is_gone(cgroup, kmsg):
    reports = []
    watch = run_watch(cgroup, kmsg=kmsg, on_oom=reports.append)
    (cgroup.path / "memory.events").unlink()

    assert watch.check_oom() is False
    assert reports == []


# ---- pressure in sampling mode ---------------------------------------------


def thresholds(**given):
    values = {"cpu": 80.0, "memory": 20.0, "io": 40.0}
    values.update(given)
    return values


class PressureLog:
    """on_pressure calls, with the virtual time since the watch started."""

    def __init__(self):
        self.start = trio.current_time()
        self.turns = []

    def __call__(self, resource, turn, share):
        now = trio.current_time() - self.start
        self.turns.append((now, resource, turn, share))


async def stall_each_window(cgroup, resource, us, windows):
    """Raise a resource's stall total by ``us`` once in each of ``windows``
    windows, half-way through, so each sample sees exactly one raise."""
    await trio.sleep(WINDOW_S / 2)
    for index in range(windows):
        if index:
            await trio.sleep(WINDOW_S)
        cgroup.stall(resource, us)
    await trio.sleep(WINDOW_S / 2)


async def watch_pressure_for(watch, scenario, quiet_windows=2):
    """Run watch_pressure alongside ``scenario``, then some quiet windows."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.watch_pressure)
        await scenario
        await trio.sleep(quiet_windows * WINDOW_S)
        nursery.cancel_scope.cancel()


def approx_turns(turns):
    return [
        (pytest.approx(t), resource, turn, pytest.approx(share))
        for t, resource, turn, share in turns
    ]


async def test_sampling_reports_high_then_cleared_with_the_window_share(
    cgroup, autojump_clock
):
    log = PressureLog()
    config = PressureConfig(thresholds=thresholds(cpu=40.0))
    watch = run_watch(cgroup, pressure=config, on_pressure=log)

    await watch_pressure_for(
        watch, stall_each_window(cgroup, "cpu", 1_000_000, windows=3)
    )

    assert log.turns == approx_turns(
        [(2.0, "cpu", "high", 50.0), (8.0, "cpu", "cleared", 0.0)]
    )


async def test_sampling_reports_nothing_below_the_threshold(cgroup, autojump_clock):
    log = PressureLog()
    watch = run_watch(cgroup, on_pressure=log)

    await watch_pressure_for(
        watch, stall_each_window(cgroup, "memory", 300_000, windows=5)
    )

    assert log.turns == []


async def test_sampling_keeps_a_share_at_80_percent_of_the_threshold_high(
    cgroup, autojump_clock
):
    log = PressureLog()
    watch = run_watch(cgroup, on_pressure=log)  # memory: high at 20 %

    async def scenario():
        await stall_each_window(cgroup, "memory", 500_000, windows=1)  # 25 %
        await stall_each_window(cgroup, "memory", 320_000, windows=3)  # 16 %

    await watch_pressure_for(watch, scenario())

    assert log.turns == approx_turns(
        [(2.0, "memory", "high", 25.0), (10.0, "memory", "cleared", 0.0)]
    )


async def test_sampling_tracks_each_resource_on_its_own(cgroup, autojump_clock):
    log = PressureLog()
    watch = run_watch(cgroup, on_pressure=log)

    async def scenario():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stall_each_window, cgroup, "io", 1_800_000, 2)  # 90 %
            nursery.start_soon(stall_each_window, cgroup, "cpu", 1_000_000, 2)

    await watch_pressure_for(watch, scenario())

    assert log.turns == approx_turns(
        [(2.0, "io", "high", 90.0), (6.0, "io", "cleared", 0.0)]
    )


async def test_sampling_acts_once_the_share_stayed_above_the_limit_for_the_duration(
    cgroup, autojump_clock
):
    log = PressureLog()
    config = PressureConfig(actions=[PressureAction("cpu", 40.0, 4.0, "restart")])
    watch = run_watch(cgroup, pressure=config, on_pressure=log)

    await watch_pressure_for(
        watch, stall_each_window(cgroup, "cpu", 1_000_000, windows=3)
    )

    # Windows at or above 40 % end at 2, 4 and 6 s: 4 s after the first.
    assert log.turns == approx_turns([(6.0, "cpu", "act", 50.0)])


async def test_sampling_acts_once_while_the_share_stays_above_the_limit(
    cgroup, autojump_clock
):
    log = PressureLog()
    config = PressureConfig(actions=[PressureAction("cpu", 40.0, 4.0, "restart")])
    watch = run_watch(cgroup, pressure=config, on_pressure=log)

    await watch_pressure_for(
        watch, stall_each_window(cgroup, "cpu", 1_000_000, windows=6)
    )

    assert log.turns == approx_turns([(6.0, "cpu", "act", 50.0)])


async def test_sampling_does_not_act_when_a_window_dips_below_the_limit(
    cgroup, autojump_clock
):
    log = PressureLog()
    config = PressureConfig(actions=[PressureAction("cpu", 40.0, 4.0, "stop")])
    watch = run_watch(cgroup, pressure=config, on_pressure=log)

    async def scenario():
        await stall_each_window(cgroup, "cpu", 1_000_000, windows=2)
        await stall_each_window(cgroup, "cpu", 600_000, windows=1)  # 30 %
        await stall_each_window(cgroup, "cpu", 1_000_000, windows=2)

    await watch_pressure_for(watch, scenario())

    assert log.turns == []


async def test_watch_pressure_ends_when_the_cgroup_is_gone(cgroup, autojump_clock):
    watch = run_watch(cgroup)
    start = trio.current_time()

    async def remove_cgroup():
        await trio.sleep(3.0)
        for path in cgroup.path.iterdir():
            path.unlink()
        cgroup.path.rmdir()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(remove_cgroup)
            await watch.watch_pressure()

    assert trio.current_time() - start == pytest.approx(4.0)


@pytest.mark.parametrize(
    "mode", [PressureMode("unavailable", 1.0), PressureMode("trigger", 2.0)]
)
async def test_watch_pressure_returns_at_once_without_pressure_files(
    tmp_path, autojump_clock, mode
):
    log = PressureLog()
    dirs = CgroupDirs(layout=Layout.V1, v1={"memory": tmp_path / "memory"})
    watch = RunWatch(
        container_id=CONTAINER,
        pid1=PID1,
        dirs=dirs,
        kmsg=None,
        mode=mode,
        pressure=PressureConfig(),
        on_oom=lambda kills: None,
        on_pressure=log,
    )
    start = trio.current_time()

    with trio.fail_after(60):
        await watch.watch_pressure()

    assert trio.current_time() == start
    assert log.turns == []


async def test_an_unavailable_mode_watches_no_pressure_even_where_files_exist(
    cgroup, autojump_clock
):
    log = PressureLog()
    config = PressureConfig(thresholds=thresholds(cpu=10.0))
    watch = run_watch(
        cgroup, pressure=config, on_pressure=log, mode=PressureMode("unavailable", 2.0)
    )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.watch_pressure)
        await stall_each_window(cgroup, "cpu", 2_000_000, windows=3)
        nursery.cancel_scope.cancel()

    assert log.turns == []


def test_pressure_mode_is_unavailable_without_a_unified_cgroup(tmp_path):
    assert PressureMode.detect(None, 2.0) == PressureMode("unavailable", 2.0)
    assert PressureMode.detect(tmp_path, 2.0) == PressureMode("unavailable", 2.0)


# ---- peak memory pressure --------------------------------------------------


async def test_peak_memory_pressure_is_the_highest_window_share_seen(
    cgroup, autojump_clock
):
    watch = run_watch(cgroup)

    async def scenario():
        await stall_each_window(cgroup, "memory", 200_000, windows=1)  # 10 %
        await stall_each_window(cgroup, "memory", 730_000, windows=1)  # 36.5 %
        await stall_each_window(cgroup, "memory", 100_000, windows=1)  # 5 %

    await watch_pressure_for(watch, scenario())
    cgroup.set_avg10("memory", 12.0)

    assert watch.peak_memory_pressure() == 36.5


def test_peak_memory_pressure_includes_the_10_s_average_at_the_end(cgroup):
    watch = run_watch(cgroup)
    cgroup.set_avg10("memory", 7.25)

    assert watch.peak_memory_pressure() == 7.25


def test_peak_memory_pressure_is_0_when_nothing_was_seen_or_left(cgroup):
    watch = run_watch(cgroup)
    (cgroup.path / "memory.pressure").unlink()

    assert watch.peak_memory_pressure() == 0.0
