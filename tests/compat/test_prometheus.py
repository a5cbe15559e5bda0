"""A real Prometheus server (Debian's prometheus package) scrapes a running
corrald on loopback, and PromQL over its HTTP API sees the right figures;
promtool accepts a live scrape."""

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from daemon import BIN_DIR, Daemon, shut_down, unique_name, wait_until

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
MEMORY_LIMIT = 48 << 20

pytestmark = pytest.mark.skipif(
    not (PROMETHEUS.exists() and PROMTOOL.exists()),
    reason="needs /usr/bin/prometheus and /usr/bin/promtool: "
    "apt-get install prometheus",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


class ExporterDaemon(Daemon):
    """A corrald started with --metrics-addr on a port of the test's."""

    def __init__(self, root: Path, port: int):
        super().__init__(root)
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self._addr = f"127.0.0.1:{port}"

    def start(self, timeout_s: float = 15) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN_DIR / "corrald"), "--root", str(self.state_dir),
                 "--socket", str(self.socket), "--cgroup-parent", self.cgroup_parent,
                 "--metrics-addr", self._addr],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )

        def answers():
            if self.proc.poll() is not None:
                log = self.log_path.read_text()
                raise RuntimeError(f"corrald exited early:\n{log}")
            return get(self.metrics_url)[0] == 200

        wait_until(answers, timeout_s, message="corrald's metrics endpoint")


@pytest.fixture(scope="module")
def corrald(compat_busybox_archive):
    root = Path(tempfile.mkdtemp(prefix="corral-prom-"))
    d = ExporterDaemon(root, free_port())
    try:
        d.start()
        assert "Loaded image: busybox:test" in d.load(compat_busybox_archive)
        yield d
        shut_down(d)
    finally:
        if d.running:
            d.crash()
        d.cleanup_cgroups()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def prometheus(corrald, tmp_path_factory):
    """A Prometheus server of the test's own scraping corrald every second;
    its query API's base URL."""
    top = tmp_path_factory.mktemp("prometheus")
    target = corrald.metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = top / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: corrald\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    with open(top / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}",
             f"--storage.tsdb.path={top / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is None and get(f"{base}/-/ready")[0] == 200,
                   30, message="Prometheus ready")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def query(base: str, promql: str) -> list[dict]:
    status, body = get(f"{base}/api/v1/query?" + urllib.parse.urlencode(
        {"query": promql}))
    assert status == 200, body[:500]
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def one_value(base: str, promql: str) -> float | None:
    result = query(base, promql)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_prometheus_sees_the_memory_limit_and_a_rising_cpu_counter(corrald,
                                                                   prometheus):
    name = unique_name("prom-busy")
    corrald.run_detached("--name", name, "-m", "48m", "--cpus", "0.5",
                         "busybox:test", "sh", "-c", "yes > /dev/null")
    try:
        limit = wait_until(
            lambda: one_value(prometheus,
                              f'container_spec_memory_limit_bytes{{name="{name}"}}'),
            15, message="the memory limit in Prometheus")
        cpu = f'container_cpu_usage_seconds_total{{name="{name}",cpu="total"}}'
        first = wait_until(lambda: one_value(prometheus, cpu), 10,
                           message="the CPU counter in Prometheus")
        time.sleep(3)
        later = one_value(prometheus, cpu)
        rate = wait_until(lambda: one_value(prometheus, f"rate({cpu}[5s])"), 10,
                          message="a CPU rate")
    finally:
        corrald.cli("rm", "-f", name)

    assert limit == MEMORY_LIMIT
    assert later > first
    assert 0 < rate <= 0.6
    assert one_value(prometheus, 'up{job="corrald"}') == 1


def test_promtool_accepts_a_live_scrape(corrald):
    name = unique_name("prom-lint")
    corrald.run_detached("--name", name, "--label", "com.example.team=web",
                         "--health-cmd", "true", "--health-interval", "1s",
                         "busybox:test", "sleep", "300")
    try:
        wait_until(lambda: b'status="healthy"} 1' in get(corrald.metrics_url)[1],
                   10, message="a health series")
        corrald.cli("exec", name, "true", check=True)
        status, body = get(corrald.metrics_url)
    finally:
        corrald.cli("rm", "-f", name)

    assert status == 200
    assert f'name="{name}"'.encode() in body
    result = subprocess.run([str(PROMTOOL), "check", "metrics"], input=body,
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""
