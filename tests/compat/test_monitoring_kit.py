"""The monitoring kit in deploy/: Prometheus scrape config, alert rules and
their unit tests, Grafana dashboard and provisioning. No corrald is needed.

promtool checks the scrape config and the rules and runs the rules' unit
tests. A real Prometheus server, started on a free loopback port with the
kit's prometheus.yml, says which target it scrapes and which rules it
loaded: the rules are read back through its API, not parsed here, so no
YAML library is needed. The dashboard is plain JSON, and its queries go
through promtool's PromQL parser. Every query in the rules and the dashboard
may name only series that corrald exports.

Needs promtool and prometheus, both from Debian's package "prometheus".
"""

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD = GRAFANA_DIR / "corral-dashboard.json"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="needs promtool on PATH: apt-get install prometheus",
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs the prometheus server on PATH: apt-get install prometheus",
)

PER_CONTAINER = {
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_memory_rss",
    "container_memory_cache",
    "container_memory_swap",
    "container_memory_max_usage_bytes",
    "container_memory_failcnt",
    "container_oom_events_total",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_spec_cpu_quota",
    "container_spec_cpu_period",
    "container_spec_cpu_shares",
    "container_processes",
    "container_threads",
    "container_file_descriptors",
    "container_start_time_seconds",
    "container_last_seen",
    "container_fs_reads_bytes_total",
    "container_fs_writes_bytes_total",
    *(
        f"container_pressure_{resource}_{kind}_seconds_total"
        for resource in ("cpu", "memory", "io")
        for kind in ("stalled", "waiting")
    ),
    *(
        f"container_network_{direction}_{what}_total"
        for direction in ("receive", "transmit")
        for what in ("bytes", "packets", "errors", "packets_dropped")
    ),
    "corral_container_restarts_total",
    "corral_container_state",
    "corral_container_last_exit_code",
    "corral_container_terminations_total",
    "corral_container_restart_backoff_seconds",
    "corral_container_health_status",
    "corral_container_pressure_avg10",
    "corral_container_restart_gave_up",
    "corral_events_total",
}
DAEMON = {
    "corral_api_request_duration_seconds_bucket",
    "corral_api_request_duration_seconds_sum",
    "corral_api_request_duration_seconds_count",
    "corral_daemon_event_loop_lag_seconds",
    "corral_daemon_supervised_containers",
    "up",
}
EXPORTED = PER_CONTAINER | DAEMON

# Words of PromQL (and Grafana's label_values) that are not series names.
_PROMQL_WORDS = """
    and or unless by without on ignoring group_left group_right offset bool
    inf nan Inf NaN sum avg min max count group stddev topk bottomk quantile
    rate irate increase delta idelta changes resets deriv absent
    absent_over_time avg_over_time min_over_time max_over_time sum_over_time
    count_over_time last_over_time histogram_quantile clamp_min clamp_max
    label_replace label_join vector scalar time timestamp sort sort_desc
    label_values
"""
PROMQL_WORDS = set(_PROMQL_WORDS.split())

EXPECTED_ALERTS = {
    # name: (for, in seconds; the label that says what the alert is about)
    "ContainerRestartingTooOften": (60, "name"),
    "ContainerCrashLoopGaveUp": (60, "name"),
    "ContainerOOMKilled": (0, "name"),
    "ContainerMemoryPressureSustained": (300, "name"),
    "ContainerUnhealthy": (60, "name"),
    "CorralDown": (60, "instance"),
    "CorralEventLoopLagging": (120, "instance"),
}


def promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    grouping = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    expr = re.sub(grouping, "", expr)
    words = re.findall(r"(?<![\w.])[a-zA-Z_:][\w:]*", expr)
    return set(words) - PROMQL_WORDS


def test_metric_names_finds_series_and_skips_labels_functions_and_numbers():
    expr = (
        '(rate(foo_total{a="b", c=~"x|y"}[5m]) > 0.2 unless foo_total offset 1h)'
        ' and on (id, instance) bar{state="exited"} == 1e3'
        " or sum by (name) (baz)"
    )
    assert metric_names(expr) == {"foo_total", "bar", "baz"}


@needs_promtool
def test_promtool_accepts_the_scrape_config_and_finds_its_rule_file():
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


@needs_promtool
def test_promtool_accepts_the_alert_rules_with_every_lint():
    result = promtool(
        "check",
        "rules",
        "--lint=all",
        "--lint-fatal",
        str(PROMETHEUS_DIR / "alerts.yml"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


@needs_promtool
def test_alert_rules_pass_their_unit_tests():
    result = promtool("test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_case_that_fires_and_one_that_does_not():
    text = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    cases = re.findall(
        r"^\s*alertname: (\w+)\n\s*exp_alerts:(.*)$", text, flags=re.MULTILINE
    )
    # Each case names its alert on the line before exp_alerts; a case
    # written another way would be missed here, so it fails instead.
    assert len(cases) == len(re.findall(r"\balertname:", text))
    firing = {name for name, rest in cases if rest.strip() != "[]"}
    quiet = {name for name, rest in cases if rest.strip() == "[]"}
    assert firing == set(EXPECTED_ALERTS)
    assert quiet == set(EXPECTED_ALERTS)


def test_rule_file_documents_the_health_status_series():
    lines = (PROMETHEUS_DIR / "alerts.yml").read_text().splitlines()
    comments = " ".join(
        " ".join(line.strip().lstrip("#").split())
        for line in lines
        if line.strip().startswith("#")
    )
    assert "corral_container_health_status{status} 1 for the health status" in comments
    assert "(starting, healthy, unhealthy)" in comments


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def prometheus_api(tmp_path_factory):
    """The base URL of a Prometheus server running deploy's prometheus.yml."""
    workdir = tmp_path_factory.mktemp("prometheus")
    address = f"127.0.0.1:{free_loopback_port()}"
    log_path = workdir / "prometheus.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={PROMETHEUS_DIR / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://{address}"
        wait_ready(url, server, log_path)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_ready(url: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prometheus exited early:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"prometheus not ready after 30 s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def loaded_alerts(prometheus_api) -> dict[str, dict]:
    groups = get_json(f"{prometheus_api}/api/v1/rules")["data"]["groups"]
    assert [group["name"] for group in groups] == ["corral"]
    return {rule["name"]: rule for rule in groups[0]["rules"]}


@needs_prometheus
def test_prometheus_scrapes_corrald_on_loopback_every_15_seconds(prometheus_api):
    deadline = time.monotonic() + 30
    targets = []
    while not targets and time.monotonic() < deadline:
        targets = get_json(f"{prometheus_api}/api/v1/targets")["data"]["activeTargets"]
        time.sleep(0.1)
    assert [
        (t["labels"]["job"], t["scrapeUrl"], t["scrapeInterval"]) for t in targets
    ] == [("corral", "http://127.0.0.1:9323/metrics", "15s")]


@needs_prometheus
def test_prometheus_loads_the_corral_alerts_with_their_for_durations(loaded_alerts):
    assert {name: rule["duration"] for name, rule in loaded_alerts.items()} == {
        name: for_s for name, (for_s, _) in EXPECTED_ALERTS.items()
    }
    assert all(rule["type"] == "alerting" for rule in loaded_alerts.values())


@needs_prometheus
@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_alert_has_a_severity_and_names_what_it_is_about(loaded_alerts, alert):
    rule = loaded_alerts[alert]
    subject = "{{ $labels." + EXPECTED_ALERTS[alert][1] + " }}"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert subject in rule["annotations"]["summary"]
    assert subject in rule["annotations"]["description"]


@needs_prometheus
def test_alert_queries_use_only_series_that_corrald_exports(loaded_alerts):
    for name, rule in loaded_alerts.items():
        assert metric_names(rule["query"]) <= EXPORTED, name
    per_container = {
        name for name, (_, subject) in EXPECTED_ALERTS.items() if subject == "name"
    }
    for name in per_container:
        assert metric_names(loaded_alerts[name]["query"]) <= PER_CONTAINER, name


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(dashboard: dict) -> list[str]:
    return [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]


def test_dashboard_is_provisionable_under_a_fixed_uid(dashboard):
    assert dashboard["uid"] == "corral"
    assert dashboard["title"] == "corral containers"
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["id"] is None


def test_dashboard_asks_for_a_prometheus_and_the_containers_to_show(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    name = variables["name"]
    assert name["type"] == "query"
    assert (
        name["query"]
        == 'label_values(container_start_time_seconds{job="corral"}, name)'
    )
    assert name["multi"] is True
    assert name["includeAll"] is True


def test_every_dashboard_query_goes_to_the_chosen_prometheus(dashboard):
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(
        dashboard["panels"]
    )
    for panel in dashboard["panels"]:
        assert panel["datasource"] == chosen, panel["title"]
        assert all(t["datasource"] == chosen for t in panel["targets"]), panel["title"]


def test_dashboard_shows_cpu_memory_restarts_ooms_pressure_and_health(dashboard):
    sel = 'job="corral", name=~"$name"'
    expected = {
        f"rate(container_cpu_usage_seconds_total{{{sel}}}[1m])",
        f"container_memory_working_set_bytes{{{sel}}}",
        f"container_spec_memory_limit_bytes{{{sel}}} > 0",
        f"increase(corral_container_restarts_total{{{sel}}}[5m])",
        f"increase(container_oom_events_total{{{sel}}}[5m])",
        f'corral_container_health_status{{{sel}, status="unhealthy"}}',
        *(
            f"rate(container_pressure_{resource}_{kind}_seconds_total{{{sel}}}[1m])"
            for resource in ("cpu", "memory", "io")
            for kind in ("waiting", "stalled")
        ),
    }
    timeseries = [p for p in dashboard["panels"] if p["type"] == "timeseries"]
    assert expected <= {t["expr"] for p in timeseries for t in p["targets"]}
    stats = [p for p in dashboard["panels"] if p["type"] == "stat"]
    assert [metric_names(t["expr"]) for p in stats for t in p["targets"]] == [
        {"corral_daemon_supervised_containers"}
    ]


@needs_promtool
def test_dashboard_queries_are_valid_promql(dashboard, tmp_path):
    # promtool parses PromQL only inside rule files; JSON is YAML, so the
    # queries go into a rule file of recording rules, one per query.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, expr in enumerate(dashboard_exprs(dashboard))
    ]
    path = tmp_path / "dashboard_rules.json"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_use_only_series_that_corrald_exports(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    selector = re.fullmatch(r"label_values\((.*), *\w+\)", variables["name"]["query"])
    queries = [*dashboard_exprs(dashboard), selector.group(1)]
    for query in queries:
        assert metric_names(query) <= EXPORTED, query


def test_grafana_provisioning_finds_the_dashboard_and_prometheus():
    dashboards = (GRAFANA_DIR / "provisioning" / "dashboards.yml").read_text()
    datasources = (GRAFANA_DIR / "provisioning" / "datasources.yml").read_text()
    assert re.search(r"^apiVersion: 1$", dashboards, flags=re.MULTILINE)
    assert re.search(r"^\s+type: file$", dashboards, flags=re.MULTILINE)
    assert re.search(r"^\s+options:\n\s+path: /\S+$", dashboards, flags=re.MULTILINE)
    assert re.search(r"^apiVersion: 1$", datasources, flags=re.MULTILINE)
    assert re.search(r"^\s+type: prometheus$", datasources, flags=re.MULTILINE)
    assert re.search(
        r"^\s+url: http://127\.0\.0\.1:9090$", datasources, flags=re.MULTILINE
    )


# Series a container has only with a health check, interfaces or block I/O
# of its own, and Prometheus's own up.
CONDITIONAL = {
    "corral_container_health_status",
    "container_fs_reads_bytes_total",
    "container_fs_writes_bytes_total",
    *(name for name in PER_CONTAINER if name.startswith("container_network_")),
    "up",
}


def test_every_series_the_kit_names_is_in_a_live_scrape_of_corrald(daemon, name):
    daemon.cli("run", "-d", "--name", name, "--cpus", "0.5", "busybox:test",
               "sleep", "300", check=True)
    try:
        reply = daemon.request("GET", "/metrics")
    finally:
        daemon.api("DELETE", f"/containers/{name}", force=1)

    scraped = {
        line.split("{")[0].split(" ")[0]
        for line in reply.body.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert EXPORTED - CONDITIONAL <= scraped, sorted(EXPORTED - CONDITIONAL - scraped)
