"""The metrics collector and exporter against fake cgroup trees under
tmp_path, for each host layout: the real collector reads the files, and an
independent parser (prometheus-client's) reads what it wrote."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio
from exposition import parse
from prometheus_client import generate_latest

from metrics.collector import ContainerCollector, Target
from metrics.exporter import Exporter
from runtime.cgroups import CgroupDirs, Layout
from supervisor.config import ConfigError, load_config, parse_listen_addr
from supervisor.events import EventBus

USER_HZ = os.sysconf("SC_CLK_TCK")
PRESSURE = {
    "cpu": "some avg10=12.50 avg60=3.00 avg300=1.00 total=4000000\n"
           "full avg10=2.00 avg60=1.00 avg300=0.50 total=1000000\n",
    "memory": "some avg10=0.00 avg60=0.00 avg300=0.00 total=250000\n"
              "full avg10=0.00 avg60=0.00 avg300=0.00 total=125000\n",
    "io": "some avg10=1.00 avg60=0.00 avg300=0.00 total=0\n"
          "full avg10=0.50 avg60=0.00 avg300=0.00 total=0\n",
}
V2_FILES = {
    "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
                "nr_periods 120\nnr_throttled 30\nthrottled_usec 1500000\n",
    "cpu.max": "50000 100000\n",
    "cpu.weight": "100\n",
    "memory.current": "104857600\n",
    "memory.stat": "anon 73400320\nfile 31457280\ninactive_file 10485760\n",
    "memory.max": "134217728\n",
    "memory.swap.max": "max\n",
    "memory.swap.current": "4096\n",
    "memory.peak": "120000000\n",
    "memory.events": "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n",
    "io.stat": "259:7 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
    "pids.current": "5\n",
    "pids.max": "max\n",
    **{f"{resource}.pressure": text for resource, text in PRESSURE.items()},
}
V1_FILES = {
    "cpuacct": {"cpuacct.usage": "2500000000\n",
                "cpuacct.stat": f"user {2 * USER_HZ}\nsystem {USER_HZ // 2}\n"},
    "cpu": {"cpu.stat": "nr_periods 120\nnr_throttled 30\nthrottled_time 1500000000\n",
            "cpu.cfs_quota_us": "50000\n", "cpu.cfs_period_us": "100000\n",
            "cpu.shares": "1024\n"},
    "memory": {"memory.usage_in_bytes": "104857600\n",
               "memory.stat": "cache 1\nrss 2\ntotal_rss 73400320\n"
                              "total_cache 31457280\ntotal_inactive_file 10485760\n"
                              "total_swap 4096\n",
               "memory.limit_in_bytes": "134217728\n",
               "memory.memsw.limit_in_bytes": "268435456\n",
               "memory.max_usage_in_bytes": "120000000\n",
               "memory.failcnt": "7\n"},
    "blkio": {"blkio.throttle.io_service_bytes_recursive":
              "259:7 Read 4096\n259:7 Write 8192\n259:7 Sync 0\nTotal 12288\n"},
    "pids": {"pids.current": "5\n", "pids.max": "max\n"},
}
# What both layouts must show for the files above.
SAME_ON_EVERY_LAYOUT = {
    "container_cpu_usage_seconds_total": 2.5,
    "container_cpu_user_seconds_total": 2.0,
    "container_cpu_system_seconds_total": 0.5,
    "container_cpu_cfs_periods_total": 120,
    "container_cpu_cfs_throttled_periods_total": 30,
    "container_cpu_cfs_throttled_seconds_total": 1.5,
    "container_memory_usage_bytes": 104857600,
    "container_memory_working_set_bytes": 104857600 - 10485760,
    "container_memory_rss": 73400320,
    "container_memory_cache": 31457280,
    "container_memory_swap": 4096,
    "container_memory_max_usage_bytes": 120000000,
    "container_memory_failcnt": 7,
    "container_spec_memory_limit_bytes": 134217728,
    "container_spec_cpu_quota": 50000,
    "container_spec_cpu_period": 100000,
    "container_processes": 1,
    "container_threads": 5,
    "container_start_time_seconds": 1700000000.5,
}


def write_files(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    (directory / "cgroup.procs").write_text(f"{os.getpid()}\n")
    return directory


def v2_cgroup(tmp_path: Path) -> CgroupDirs:
    return CgroupDirs(Layout.V2, unified=write_files(tmp_path / "v2/c1", V2_FILES))


def v1_cgroup(tmp_path: Path, with_unified: bool) -> CgroupDirs:
    v1 = {name: write_files(tmp_path / name / "c1", files)
          for name, files in V1_FILES.items()}
    if not with_unified:
        return CgroupDirs(Layout.V1, v1=v1)
    unified = write_files(tmp_path / "unified/c1",
                          {f"{r}.pressure": t for r, t in PRESSURE.items()})
    return CgroupDirs(Layout.HYBRID, v1=v1, unified=unified)


def target(dirs: CgroupDirs | None, **fields) -> Target:
    values = {"cgroup_id": "/corral/c1", "name": "web", "image": "busybox:test",
              "cgroup": dirs, "started_at_s": 1700000000.5, "own_network": False,
              "state": "running" if dirs is not None else "exited"}
    values.update(fields)
    return Target(**values)


def scrape(*targets: Target, sys_root: Path = Path("/nonexistent")) -> dict:
    """{(sample name, labels as a frozenset): value}, as a client parses it."""
    exporter = Exporter(lambda: list(targets), dict)
    exporter.containers = ContainerCollector(lambda: list(targets), sys_root)
    return parse(exporter.render_snapshot(exporter.snapshot()).decode())


def values(series: dict, sample: str, /, **labels) -> list[float]:
    """The values of one sample name's series that carry the given labels."""
    wanted = set(labels.items())
    return [v for (n, lab), v in series.items() if n == sample and wanted <= lab]


def value(series: dict, sample: str, /, **labels) -> float:
    found = values(series, sample, **labels)
    assert len(found) == 1, f"{sample} {labels}: {found}"
    return found[0]


# ---- cAdvisor's series on every layout -------------------------------------


@pytest.fixture(params=["v2", "hybrid", "v1"])
def layout_dirs(request, tmp_path) -> CgroupDirs:
    if request.param == "v2":
        return v2_cgroup(tmp_path)
    return v1_cgroup(tmp_path, with_unified=request.param == "hybrid")


def test_each_layout_gives_the_same_cadvisor_figures(layout_dirs):
    series = scrape(target(layout_dirs))

    for family, expected in SAME_ON_EVERY_LAYOUT.items():
        assert value(series, family, name="web") == pytest.approx(expected), family
    assert value(series, "container_cpu_usage_seconds_total", cpu="total") == 2.5
    assert value(series, "container_fs_reads_bytes_total", device="259:7") == 4096
    assert value(series, "container_fs_writes_bytes_total", device="259:7") == 8192
    assert value(series, "container_file_descriptors") > 0
    assert value(series, "container_last_seen") > 1700000000


def test_limits_read_from_the_files_of_each_layout(tmp_path):
    v2 = scrape(target(v2_cgroup(tmp_path / "a")))
    v1 = scrape(target(v1_cgroup(tmp_path / "b", with_unified=False)))

    # v2: cpu.weight 100 shown as shares as cAdvisor converts it; swap.max
    # "max" is no limit. v1: memsw minus memory is the swap alone.
    assert value(v2, "container_spec_cpu_shares") == 2597
    assert value(v2, "container_spec_memory_swap_limit_bytes") == 0
    assert value(v1, "container_spec_cpu_shares") == 1024
    assert value(v1, "container_spec_memory_swap_limit_bytes") == 134217728


def test_no_cpu_quota_means_no_quota_series(tmp_path):
    dirs = v2_cgroup(tmp_path)
    (dirs.unified / "cpu.max").write_text("max 100000\n")

    series = scrape(target(dirs))

    assert values(series, "container_spec_cpu_quota") == []
    assert value(series, "container_spec_cpu_period") == 100000


@pytest.mark.parametrize("layout", ["v2", "hybrid"])
def test_pressure_series_mirror_the_pressure_files_in_seconds(tmp_path, layout):
    dirs = v2_cgroup(tmp_path) if layout == "v2" else v1_cgroup(tmp_path, True)

    series = scrape(target(dirs))

    assert value(series, "container_pressure_cpu_waiting_seconds_total") == 4.0
    assert value(series, "container_pressure_cpu_stalled_seconds_total") == 1.0
    assert value(series, "container_pressure_memory_waiting_seconds_total") == 0.25
    assert value(series, "container_pressure_memory_stalled_seconds_total") == 0.125
    assert value(series, "container_pressure_io_waiting_seconds_total") == 0
    pressure = [k for k in series if k[0].startswith("container_pressure_")]
    assert len(pressure) == 6
    assert value(series, "corral_container_pressure_avg10",
                 resource="cpu", kind="some") == 12.5
    assert value(series, "corral_container_pressure_avg10",
                 resource="io", kind="full") == 0.5


def test_without_pressure_files_the_pressure_series_are_absent_not_zero(tmp_path):
    series = scrape(target(v1_cgroup(tmp_path, with_unified=False)))

    assert [k for k in series if "pressure" in k[0]] == []
    assert value(series, "container_memory_usage_bytes") == 104857600


def test_a_unified_cgroup_without_psi_has_no_pressure_series(tmp_path):
    dirs = v2_cgroup(tmp_path)
    for resource in PRESSURE:
        (dirs.unified / f"{resource}.pressure").unlink()

    series = scrape(target(dirs))

    assert [k for k in series if "pressure" in k[0]] == []
    assert value(series, "container_cpu_usage_seconds_total") == 2.5


def test_block_devices_are_named_as_cadvisor_names_them(tmp_path):
    uevent = tmp_path / "sys/dev/block/259:7/uevent"
    uevent.parent.mkdir(parents=True)
    uevent.write_text("MAJOR=259\nMINOR=7\nDEVNAME=nvme0n1\nDEVTYPE=disk\n")

    series = scrape(target(v2_cgroup(tmp_path)), sys_root=tmp_path / "sys")

    assert value(series, "container_fs_reads_bytes_total",
                 device="/dev/nvme0n1") == 4096


def test_network_series_only_for_a_network_namespace_of_its_own(tmp_path):
    dirs = v2_cgroup(tmp_path)
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    interfaces = {line.split(":")[0].strip() for line in lines} - {"lo"}

    own = scrape(target(dirs, pid1=os.getpid(), own_network=True))
    host = scrape(target(dirs, pid1=os.getpid(), own_network=False))

    seen = {dict(k[1])["interface"] for k in own
            if k[0] == "container_network_receive_bytes_total"}
    assert seen == interfaces
    assert "lo" not in seen
    assert [k for k in host if k[0].startswith("container_network_")] == []


# ---- labels ----------------------------------------------------------------


def test_labels_are_cadvisors_with_the_container_labels_sanitized(tmp_path):
    labels = {"com.example/team": "web", "a-b": "first", "a.b": "second",
              "quote": 'say "hi"\\now\n'}

    series = scrape(target(v2_cgroup(tmp_path), labels=labels))

    (key,) = [k for k in series if k[0] == "container_memory_usage_bytes"]
    assert dict(key[1]) == {
        "id": "/corral/c1", "name": "web", "image": "busybox:test",
        "container_label_com_example_team": "web",
        "container_label_a_b": "first",
        "container_label_quote": 'say "hi"\\now\n',
    }


def test_nothing_that_changes_with_a_restart_is_a_label(tmp_path):
    dirs = v2_cgroup(tmp_path)
    first = scrape(target(dirs, pid1=11, restarts=0, started_at_s=1.0))
    second = scrape(target(dirs, pid1=22, restarts=3, started_at_s=2.0,
                           terminations={"exit": 3}))

    assert set(first) == set(second)
    assert value(second, "container_start_time_seconds") == 2.0
    assert value(second, "corral_container_restarts_total") == 3


# ---- corral's own series ---------------------------------------------------


def test_lifecycle_series_of_a_running_container(tmp_path):
    series = scrape(target(
        v2_cgroup(tmp_path), restarts=2, last_exit_code=3, backoff_s=0.4,
        terminations={"exit": 1, "oom": 1}, health="unhealthy", oom_kills=1))

    assert value(series, "corral_container_restarts_total") == 2
    assert {s: value(series, "corral_container_state", state=s)
            for s in ("created", "running", "restarting", "exited", "removing")
            } == {"created": 0, "running": 1, "restarting": 0, "exited": 0,
                  "removing": 0}
    assert value(series, "corral_container_last_exit_code") == 3
    assert {r: value(series, "corral_container_terminations_total", reason=r)
            for r in ("exit", "signal", "oom", "unhealthy", "pressure")
            } == {"exit": 1, "signal": 0, "oom": 1, "unhealthy": 0, "pressure": 0}
    assert value(series, "corral_container_restart_backoff_seconds") == 0.4
    assert value(series, "corral_container_health_status", status="unhealthy") == 1
    assert value(series, "corral_container_health_status", status="healthy") == 0
    assert value(series, "container_oom_events_total") == 1


def test_a_stopped_container_has_its_lifecycle_series_and_no_cgroup_series():
    series = scrape(target(None, state="exited", last_exit_code=137, oom_kills=2))

    assert value(series, "corral_container_state", state="exited") == 1
    assert value(series, "corral_container_last_exit_code") == 137
    assert value(series, "container_oom_events_total") == 2
    assert values(series, "container_memory_usage_bytes") == []
    assert values(series, "container_start_time_seconds") == []
    assert values(series, "corral_container_health_status") == []


def test_a_container_that_never_ran_shows_exit_code_0(tmp_path):
    series = scrape(target(None, state="created"))

    assert value(series, "corral_container_last_exit_code") == 0
    assert value(series, "corral_container_state", state="created") == 1


def test_a_cgroup_that_vanished_is_skipped_and_counted(tmp_path):
    gone = CgroupDirs(Layout.V2, unified=tmp_path / "no-such-cgroup")
    alive = v2_cgroup(tmp_path)

    series = scrape(target(gone, name="gone", cgroup_id="/corral/gone"),
                    target(alive))

    assert values(series, "container_memory_usage_bytes", name="gone") == []
    assert value(series, "corral_container_state", name="gone", state="running") == 1
    assert value(series, "container_memory_usage_bytes", name="web") == 104857600
    assert value(series, "corral_metrics_vanished_cgroups_total") == 1


def test_a_removed_container_is_gone_from_the_next_scrape(tmp_path):
    targets = [target(v2_cgroup(tmp_path))]
    exporter = Exporter(lambda: list(targets), dict)
    before = parse(exporter.render_snapshot(exporter.snapshot()).decode())

    targets.clear()
    after = parse(exporter.render_snapshot(exporter.snapshot()).decode())

    assert values(before, "container_memory_usage_bytes", name="web")
    assert [k for k in after if ("name", "web") in k[1]] == []


def test_events_are_counted_by_action_without_their_details():
    bus = EventBus()
    for action in ("create", "exec_create: ls -l /", "exec_create: true",
                   "health_status: healthy", "health_status: unhealthy"):
        bus.publish(action, "c1", {"name": "web"})
    exporter = Exporter(list, lambda: bus.counts)

    series = parse(exporter.render_snapshot(exporter.snapshot()).decode())

    assert {dict(k[1])["action"]: v for k, v in series.items()
            if k[0] == "corral_events_total"} == {
        "create": 1, "exec_create": 2, "health_status": 2}


# ---- the exporter ------------------------------------------------------------


def test_the_exporters_text_survives_a_trip_through_prometheus_client(tmp_path):
    targets = [target(v2_cgroup(tmp_path), labels={"a": 'b"c'}, health="healthy")]
    exporter = Exporter(lambda: targets, lambda: {"start": 1})

    fast = parse(exporter.render_snapshot(exporter.snapshot()).decode())
    standard = parse(generate_latest(exporter).decode())

    ignore = ("container_last_seen", "process_", "python_gc_",
              "corral_metrics_scrape_duration_seconds")
    assert {k: v for k, v in fast.items() if not k[0].startswith(ignore)} == {
        k: v for k, v in standard.items() if not k[0].startswith(ignore)}


def test_request_durations_are_a_histogram_by_route_and_status():
    exporter = Exporter(list, dict)
    for duration_s in (0.0005, 0.003, 0.2, 30):
        exporter.observe_request("GET", "/containers/{ref}/json", 200, duration_s)
    exporter.observe_request("GET", "other", 404, 0.001)
    exporter.observe_request("BREW", "other", 405, 0.001)

    series = parse(exporter.render_snapshot(exporter.snapshot()).decode())

    name = "corral_api_request_duration_seconds"
    labels = {"method": "GET", "route": "/containers/{ref}/json", "status": "200"}
    assert value(series, f"{name}_bucket", le="0.001", **labels) == 1
    assert value(series, f"{name}_bucket", le="0.005", **labels) == 2
    assert value(series, f"{name}_bucket", le="10.0", **labels) == 3
    assert value(series, f"{name}_bucket", le="+Inf", **labels) == 4
    assert value(series, f"{name}_count", **labels) == 4
    assert value(series, f"{name}_sum", **labels) == pytest.approx(30.2035)
    assert value(series, f"{name}_count", route="other", status="404") == 1
    assert value(series, f"{name}_count", method="other", status="405") == 1


def test_daemon_health_has_loop_lag_containers_and_the_standard_collectors():
    exporter = Exporter(lambda: [target(None, state="running"),
                                 target(None, name="b", state="restarting"),
                                 target(None, name="c", state="exited")], dict)
    exporter.loop_lag.observe(0.03)

    series = parse(exporter.render_snapshot(exporter.snapshot()).decode())

    assert value(series, "corral_daemon_supervised_containers") == 2
    assert value(series, "corral_daemon_event_loop_lag_seconds") == 0.03
    lag = "corral_daemon_event_loop_wakeup_lag_seconds"
    assert value(series, f"{lag}_bucket", le="0.025") == 0
    assert value(series, f"{lag}_bucket", le="0.05") == 1
    assert value(series, "process_resident_memory_bytes") > 0
    assert values(series, "python_info")


async def test_the_loop_lag_task_notes_a_late_wake_up():
    exporter = Exporter(list, dict)
    async with trio.open_nursery() as nursery:
        await nursery.start(exporter.loop_lag.run)
        await trio.sleep(exporter.loop_lag.interval_s / 2)
        # Holds the event loop, as a blocking handler would.
        time.sleep(0.3)  # noqa: ASYNC251
        await trio.sleep(exporter.loop_lag.interval_s * 2)
        nursery.cancel_scope.cancel()

    assert exporter.loop_lag.last_s < 0.3
    series = parse(exporter.render_snapshot(exporter.snapshot()).decode())
    lag = "corral_daemon_event_loop_wakeup_lag_seconds"
    assert value(series, f"{lag}_count") - value(series, f"{lag}_bucket", le="0.1") == 1


async def test_a_scrape_reads_the_files_in_a_worker_thread(tmp_path):
    loop_thread = threading.get_ident()
    threads = []

    class Spy(ContainerCollector):
        def families(self, targets):
            threads.append(threading.get_ident())
            return super().families(targets)

    targets = [target(v2_cgroup(tmp_path))]
    exporter = Exporter(lambda: targets, dict)
    exporter.containers = Spy(lambda: targets)

    body = await exporter.render()

    assert threads and threads[0] != loop_thread
    assert value(parse(body.decode()), "container_memory_usage_bytes") == 104857600


# ---- the exporter's address -------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9323", ("127.0.0.1", 9323)),
    ("[::1]:9100", ("::1", 9100)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_a_metrics_address_is_host_and_port(text, expected):
    assert parse_listen_addr(text) == expected


@pytest.mark.parametrize("text", ["9323", ":9323", "localhost:http", "a:70000"])
def test_a_bad_metrics_address_is_refused_with_examples(text):
    with pytest.raises(ConfigError, match=r"not HOST:PORT.*127\.0\.0\.1:9323"):
        parse_listen_addr(text)


def test_an_empty_or_none_metrics_address_turns_the_endpoint_off(tmp_path):
    config = tmp_path / "corrald.toml"
    config.write_text('metrics_addr = "none"\n')

    assert load_config({"config": str(config)}, {}).metrics_addr == ""
    assert load_config({"config": str(config)},
                       {"CORRAL_METRICS_ADDR": "127.0.0.1:1"}).metrics_addr == (
        "127.0.0.1:1")
    assert load_config({"config": str(config), "metrics_addr": "[::1]:2"},
                       {"CORRAL_METRICS_ADDR": ""}).metrics_addr == "[::1]:2"
    assert load_config({"config": str(config)},
                       {"CORRAL_METRICS_ADDR": ""}).metrics_addr == ""
    config.write_text("")
    assert load_config({"config": str(config)}, {}).metrics_addr is None


def test_corrald_refuses_a_bad_metrics_address_before_it_starts(tmp_path):
    corrald = Path(sys.executable).with_name("corrald")
    empty = tmp_path / "corrald.toml"
    empty.write_text("")

    result = subprocess.run(
        [str(corrald), "--config", str(empty), "--metrics-addr", "9323"],
        capture_output=True, text=True, timeout=30, check=False)

    assert result.returncode == 1
    assert "corrald: error: metrics address '9323' is not HOST:PORT" in result.stderr
