"""Docker-shaped stats of real containers: one-shot, streamed, the batch
GET /stats, and `corral stats`, with the figures the docker CLI computes."""

import json
import os
import time

import pytest
from daemon import wait_until

from supervisor.status import cpu_percent, memory_used_bytes

SLOW = float(os.environ.get("SLOW", "1"))
ZERO_TIME = "0001-01-01T00:00:00Z"


@pytest.fixture
def busy(daemon, name):
    daemon.run_detached("--name", name, "--cpus", "0.5", "-m", "64m", "busybox:test",
                        "sh", "-c", "yes > /dev/null")
    yield name
    daemon.api("DELETE", f"/containers/{name}", force=1)


def one_shot(d, ref: str) -> dict:
    return d.api("GET", f"/containers/{ref}/stats", stream=0)


def test_a_one_shot_sample_shows_cpu_memory_and_pids_as_docker_computes_them(
    daemon, busy
):
    one_shot(daemon, busy)
    time.sleep(2)

    doc = one_shot(daemon, busy)

    assert doc["name"] == f"/{busy}"
    assert 40 <= cpu_percent(doc) <= 60, cpu_percent(doc)
    assert doc["cpu_stats"]["online_cpus"] >= 1
    assert doc["cpu_stats"]["throttling_data"]["throttled_periods"] > 0
    assert doc["memory_stats"]["limit"] == 64 << 20
    assert 0 < memory_used_bytes(doc) < 64 << 20
    assert doc["pids_stats"]["current"] >= 1
    assert doc["read"] > doc["preread"]
    assert doc["corral_pressure"]["Mode"] in ("trigger", "sampling", "unavailable")
    assert doc["corral_restart_count"] == 0


def test_the_first_sample_of_a_run_averages_since_its_start(daemon, busy):
    time.sleep(1)

    doc = one_shot(daemon, busy)

    assert doc["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    assert 30 <= cpu_percent(doc) <= 60, cpu_percent(doc)


def test_a_stream_sends_a_sample_a_second_each_following_the_last(daemon, busy):
    response = daemon.client.open("GET", f"/containers/{busy}/stats", {"stream": 1})
    docs = []
    started = time.monotonic()
    for line in response:
        docs.append(json.loads(line))
        if len(docs) == 3:
            break
    response.close()

    assert 1.5 <= time.monotonic() - started <= 3.5 * SLOW
    for before, after in zip(docs, docs[1:]):
        assert after["precpu_stats"] == before["cpu_stats"]
        assert after["preread"] == before["read"]


def test_a_stopped_container_gives_an_empty_sample(daemon, name):
    daemon.cli("create", "--name", name, "busybox:test", "true", check=True)
    try:
        doc = one_shot(daemon, name)
    finally:
        daemon.api("DELETE", f"/containers/{name}", force=1)

    assert doc["read"] == ZERO_TIME
    assert doc["memory_stats"] == {}
    assert cpu_percent(doc) == 0.0


def test_the_batch_lists_every_running_container_and_no_stopped_one(
    daemon, busy, name
):
    stopped = f"{name}-stopped"
    daemon.cli("create", "--name", stopped, "busybox:test", "true", check=True)
    try:
        names = [d["name"] for d in daemon.api("GET", "/stats")]
    finally:
        daemon.api("DELETE", f"/containers/{stopped}", force=1)

    assert f"/{busy}" in names
    assert f"/{stopped}" not in names


def test_stats_of_an_unknown_container_is_404(daemon):
    reply = daemon.request("GET", "/containers/never-was/stats?stream=0")
    assert reply.status == 404
    assert reply.json()["message"] == "No such container: never-was"


def test_corral_stats_no_stream_prints_a_row_with_limit_and_pids(daemon, busy):
    time.sleep(1)

    out = daemon.cli("stats", "--no-stream", busy, check=True).stdout.splitlines()

    assert out[0].split()[:3] == ["CONTAINER", "ID", "NAME"]
    assert len(out) == 2
    row = out[1].split()
    assert row[1] == busy
    assert row[2].endswith("%")
    assert "/ 64MiB" in out[1]


def test_corral_stats_format_json_gives_the_api_document(daemon, busy):
    out = daemon.cli("stats", "--no-stream", "--format", "json", busy, check=True)

    doc = json.loads(out.stdout)
    assert doc["name"] == f"/{busy}"
    assert doc["memory_stats"]["limit"] == 64 << 20


def test_corral_stats_of_an_unknown_container_exits_1(daemon):
    result = daemon.cli("stats", "--no-stream", "never-was")
    assert result.returncode == 1
    assert "No such container: never-was" in result.stderr


def test_a_restart_starts_the_cpu_figures_afresh(daemon, name):
    daemon.run_detached("--name", name, "--restart", "always", "--restart-delay",
                        "100ms", "busybox:test", "sh", "-c", "sleep 1; exit 1")
    try:
        first = one_shot(daemon, name)
        wait_until(lambda: daemon.inspect(name)["RestartCount"] >= 1
                   and daemon.inspect(name)["State"]["Running"], 5 * SLOW,
                   message="restarted")
        again = one_shot(daemon, name)
    finally:
        daemon.api("DELETE", f"/containers/{name}", force=1)

    assert again["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    assert again["corral_restart_count"] >= 1
    assert first["read"] != ZERO_TIME
