"""The Prometheus exporter against real containers: cAdvisor's series with
the kernel's figures (C12), series that follow a container across restart
and removal (C14), corral's lifecycle and daemon series, and the TCP
endpoint. Scrapes are parsed with prometheus-client's parser, not corral's
own code."""

import itertools
import os
import socket
import time
import urllib.error
import urllib.request

import pytest
from daemon import Daemon, open_daemon, wait_until
from exposition import parse

from supervisor.logs import parse_time_ns

SLOW = float(os.environ.get("SLOW", "1"))
BUSY = "yes > /dev/null"


def scrape(d: Daemon) -> dict:
    reply = d.request("GET", "/metrics")
    assert reply.status == 200, reply.body[:500]
    return parse(reply.body.decode())


def of(series: dict, container: str) -> dict:
    """The series of one container: {(sample name, labels): value}."""
    return {k: v for k, v in series.items() if ("name", container) in k[1]}


def value(series: dict, sample: str, container: str, **labels) -> float:
    wanted = {("name", container), *labels.items()}
    found = [v for (n, lab), v in series.items() if n == sample and wanted <= lab]
    assert len(found) == 1, f"{sample} of {container} {labels}: {found}"
    return found[0]


def started_at_s(d: Daemon, ref: str) -> float:
    return parse_time_ns(d.inspect(ref)["State"]["StartedAt"]) / 1e9


# ---- C12: CPU limits and throttling ------------------------------------------


def test_c12_half_a_cpu_is_quota_50000_and_throttling_shows(daemon, case):
    daemon.run_detached("--name", case, "--cpus", "0.5", "busybox:test",
                        "sh", "-c", BUSY)
    time.sleep(1)

    m1, t1 = scrape(daemon), time.monotonic()
    time.sleep(5)
    m2, t2 = scrape(daemon), time.monotonic()

    seconds = t2 - t1

    def delta(sample):
        return value(m2, sample, case) - value(m1, sample, case)

    assert value(m2, "container_spec_cpu_quota", case) == 50000
    assert value(m2, "container_spec_cpu_period", case) == 100000
    # Never more than the quota; less only as much as a busy host takes.
    assert 0.3 * seconds <= delta("container_cpu_usage_seconds_total") <= 0.55 * seconds
    assert 8 * seconds <= delta("container_cpu_cfs_periods_total") <= 10.5 * seconds
    assert delta("container_cpu_cfs_throttled_periods_total") >= 5 * seconds
    assert delta("container_cpu_cfs_throttled_seconds_total") > 0


def test_memory_figures_and_limits_match_the_container(daemon, case):
    daemon.run_detached("--name", case, "-m", "64m", "busybox:test", "sh", "-c",
                        "exec sleep 300")

    series = scrape(daemon)

    assert value(series, "container_spec_memory_limit_bytes", case) == 64 << 20
    usage = value(series, "container_memory_usage_bytes", case)
    assert 0 < value(series, "container_memory_working_set_bytes", case) <= usage
    assert value(series, "container_processes", case) == 1
    assert value(series, "container_threads", case) == 1
    assert value(series, "container_file_descriptors", case) >= 3
    assert value(series, "container_spec_cpu_shares", case) > 0
    # No quota was set: cAdvisor shows none then.
    assert not [k for k in of(series, case) if k[0] == "container_spec_cpu_quota"]


def test_no_network_series_without_interfaces_of_its_own(daemon, case):
    daemon.run_detached("--name", f"{case}-none", "busybox:test", "sleep", "300")
    daemon.run_detached("--name", f"{case}-host", "--network", "host",
                        "busybox:test", "sleep", "300")

    series = scrape(daemon)

    for ref in (f"{case}-none", f"{case}-host"):
        assert value(series, "container_memory_usage_bytes", ref) > 0
        assert not [k for k in of(series, ref)
                    if k[0].startswith("container_network_")], ref


# ---- C14: restart and removal ------------------------------------------------


def test_c14_series_follow_a_container_across_restart_and_removal(daemon, case):
    script = "yes >/dev/null & p=$!; sleep 3; kill $p; sleep 1; exit 1"
    daemon.run_detached("--name", case, "--restart", "always", "busybox:test",
                        "sh", "-c", script)
    time.sleep(2)
    first_start = started_at_s(daemon, case)
    a = scrape(daemon)

    wait_until(lambda: daemon.inspect(case)["RestartCount"] >= 1
               and daemon.inspect(case)["State"]["Running"], 15 * SLOW,
               message="the first restart")
    time.sleep(1)
    second_start = started_at_s(daemon, case)
    b = scrape(daemon)

    start_a = value(a, "container_start_time_seconds", case)
    start_b = value(b, "container_start_time_seconds", case)
    assert abs(start_a - first_start) <= 1
    assert abs(start_b - second_start) <= 1
    assert start_b > start_a
    assert {k for k in of(a, case)} == {k for k in of(b, case)}
    assert value(b, "corral_container_restarts_total", case) >= 1
    assert value(b, "corral_container_terminations_total", case, reason="exit") >= 1

    daemon.cli("rm", "-f", case, check=True)

    assert of(scrape(daemon), case) == {}


def test_counters_never_go_down_within_a_run(daemon, case):
    daemon.run_detached("--name", case, "--cpus", "0.3", "busybox:test",
                        "sh", "-c", BUSY)
    time.sleep(0.5)
    scrapes = []
    for _ in range(8):
        scrapes.append(of(scrape(daemon), case))
        time.sleep(0.5)

    counters = [k for k in scrapes[0] if k[0].endswith("_total")]
    assert len(counters) >= 10
    for before, after in itertools.pairwise(scrapes):
        for key in counters:
            assert after[key] >= before[key], key
    usage = [k for k in counters if k[0] == "container_cpu_usage_seconds_total"]
    assert scrapes[-1][usage[0]] > scrapes[0][usage[0]]


# ---- corral's series ---------------------------------------------------------


def test_terminations_are_counted_over_the_whole_life(daemon, case):
    daemon.run_detached("--name", case, "--restart", "on-failure:2",
                        "busybox:test", "sh", "-c", "exit 3")

    wait_until(lambda: daemon.inspect(case)["State"]["Status"] == "exited"
               and daemon.inspect(case)["RestartCount"] == 2
               and len(daemon.inspect(case)["State"]["CorralTerminations"]) == 3,
               10 * SLOW, message="three runs, then giving up")
    series = scrape(daemon)

    assert daemon.inspect(case)["State"]["CorralTerminationCounts"] == {"exit": 3}
    assert value(series, "corral_container_terminations_total", case,
                 reason="exit") == 3
    assert value(series, "corral_container_terminations_total", case,
                 reason="oom") == 0
    assert value(series, "corral_container_last_exit_code", case) == 3
    assert value(series, "corral_container_restarts_total", case) == 2
    assert value(series, "corral_container_state", case, state="exited") == 1
    assert value(series, "corral_container_state", case, state="running") == 0
    assert value(series, "corral_container_restart_backoff_seconds", case) > 0
    assert not [k for k in of(series, case)
                if k[0] == "container_cpu_usage_seconds_total"]


def test_an_oom_kill_is_counted_as_such(daemon, case):
    run = daemon.cli("run", "--name", case, "-m", "32m", "--memory-swap", "32m",
                     "busybox:test", "sh", "-c",
                     "exec dd if=/dev/zero of=/dev/null bs=256M count=1")
    assert run.returncode == 137, run.stderr

    series = scrape(daemon)

    assert value(series, "corral_container_terminations_total", case,
                 reason="oom") == 1
    assert value(series, "container_oom_events_total", case) >= 1
    assert value(series, "corral_container_last_exit_code", case) == 137


def test_a_created_container_has_its_state_and_no_cgroup_series(daemon, case):
    daemon.cli("create", "--name", case, "busybox:test", "true", check=True)

    series = scrape(daemon)

    assert value(series, "corral_container_state", case, state="created") == 1
    assert value(series, "corral_container_last_exit_code", case) == 0
    assert not [k for k in of(series, case) if k[0] == "container_memory_usage_bytes"]


def test_health_status_is_one_series_per_status(daemon, case):
    daemon.run_detached("--name", case, "--health-cmd", "true",
                        "--health-interval", "1s", "busybox:test", "sleep", "300")

    wait_until(lambda: value(scrape(daemon), "corral_container_health_status",
                             case, status="healthy") == 1, 10 * SLOW,
               message="healthy in the metrics")
    series = scrape(daemon)

    assert value(series, "corral_container_health_status", case,
                 status="unhealthy") == 0
    assert value(series, "corral_container_health_status", case,
                 status="starting") == 0


def test_daemon_series_count_requests_by_route_and_events_by_kind(daemon, case):
    daemon.run_detached("--name", case, "busybox:test", "sleep", "300")
    daemon.cli("exec", case, "true", check=True)
    daemon.request("GET", f"/containers/{case}/json")
    daemon.request("GET", f"/v1.41/containers/{case}-nosuch/json")
    daemon.request("GET", f"/no/such/{case}")

    series = scrape(daemon)

    def requests(**labels):
        wanted = set(labels.items())
        return sum(v for (n, lab), v in series.items()
                   if n == "corral_api_request_duration_seconds_count"
                   and wanted <= lab)

    route = "/containers/{ref}/json"
    assert requests(method="GET", route=route, status="200") >= 1
    assert requests(method="GET", route=route, status="404") >= 1
    assert requests(route="other", status="404") >= 1
    for name, labels in series:
        if name.startswith(("corral_api_", "corral_events_")):
            assert case not in str(labels), (name, labels)
    actions = {dict(lab)["action"]: v for (n, lab), v in series.items()
               if n == "corral_events_total"}
    assert actions["exec_create"] >= 1 and actions["exec_start"] >= 1
    assert not [a for a in actions if ":" in a]
    assert value_of(series, "corral_daemon_supervised_containers") >= 1
    assert value_of(series, "corral_daemon_event_loop_lag_seconds") < 1
    assert value_of(series, "process_resident_memory_bytes") > 0


def value_of(series: dict, sample: str) -> float:
    (found,) = [v for (n, _), v in series.items() if n == sample]
    return found


# ---- the TCP endpoint --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def metrics_daemon(busybox_archive, monkeypatch):
    port = free_port()
    monkeypatch.setenv("CORRAL_METRICS_ADDR", f"127.0.0.1:{port}")
    with open_daemon(busybox_archive) as started:
        started.metrics_url = f"http://127.0.0.1:{port}/metrics"
        yield started


def test_the_tcp_endpoint_serves_the_same_metrics_and_nothing_else(metrics_daemon):
    d = metrics_daemon
    d.run_detached("--name", "tcp-scraped", "busybox:test", "sleep", "300")

    status, body = http("GET", d.metrics_url)

    assert status == 200
    over_tcp = parse(body.decode())
    assert value(over_tcp, "container_memory_usage_bytes", "tcp-scraped") > 0
    assert set(of(over_tcp, "tcp-scraped")) == set(of(scrape(d), "tcp-scraped"))
    assert http("GET", d.metrics_url.replace("/metrics", "/containers/json"))[0] == 404
    assert http("POST", d.metrics_url)[0] == 405


def test_a_taken_metrics_address_stops_corrald_with_a_clear_error(tmp_path,
                                                                  monkeypatch):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    monkeypatch.setenv("CORRAL_METRICS_ADDR", f"127.0.0.1:{holder.getsockname()[1]}")
    d = Daemon(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="corrald exited early"):
            d.start()
        assert d.proc.returncode == 1
        log = d.log_path.read_text()
        assert "cannot listen for Prometheus on 127.0.0.1:" in log
        assert "address already in use" in log
    finally:
        holder.close()
        if d.running:
            d.crash()
        d.cleanup_cgroups()


def test_the_default_address_gives_way_when_taken_or_turned_off(tmp_path,
                                                                 monkeypatch):
    # Whoever holds 127.0.0.1:9323 (this test, or another corrald), a
    # corrald left at the default starts anyway and says so.
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("127.0.0.1", 9323))
        holder.listen(1)
    except OSError:
        pass
    monkeypatch.delenv("CORRAL_METRICS_ADDR", raising=False)
    for sub, setting in (("default", None), ("off", "none")):
        if setting is not None:
            monkeypatch.setenv("CORRAL_METRICS_ADDR", setting)
        d = Daemon(tmp_path / sub, default_metrics_addr=True)
        (tmp_path / sub).mkdir()
        try:
            d.start()
            assert d.request("GET", "/metrics").status == 200
            assert d.stop() == 0
        finally:
            if d.running:
                d.crash()
            d.cleanup_cgroups()
        log = d.log_path.read_text()
        wanted = ("metrics_listen_failed" if setting is None
                  else "metrics_listener_disabled")
        assert wanted in log, log[-2000:]
    holder.close()
