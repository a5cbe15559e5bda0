"""System endpoints of a real corrald: ping, version, info, versioned paths,
the Api-Version header, and the Prometheus metrics on the API socket."""

import json
import os
import re

import pytest
from daemon import wait_until

from supervisor import API_VERSION


def test_get_ping_answers_ok(daemon):
    reply = daemon.request("GET", "/_ping")

    assert (reply.status, reply.body) == (200, b"OK")
    assert reply.headers["Api-Version"] == API_VERSION


def test_head_ping_answers_200_without_a_body(daemon):
    reply = daemon.request("HEAD", "/_ping")

    assert (reply.status, reply.body) == (200, b"")
    assert reply.headers["Api-Version"] == API_VERSION


def test_version_names_the_api_version_and_the_kernel(daemon):
    doc = daemon.api("GET", "/version")

    assert doc["ApiVersion"] == API_VERSION
    assert doc["MinAPIVersion"] == "1.24"
    assert doc["Os"] == "linux"
    assert doc["KernelVersion"] == os.uname().release
    assert doc["Components"][0]["Name"] == "Engine"


def test_corral_version_shows_client_and_server(daemon):
    result = daemon.cli("version", check=True)

    assert "Server: corral" in result.stdout
    assert f"API version: {API_VERSION}" in result.stdout


def test_info_counts_containers_and_images(daemon, name):
    daemon.run_detached("--name", name, "busybox:test", "sleep", "300")
    everyone = daemon.api("GET", "/containers/json", all=1)
    running = daemon.api("GET", "/containers/json")

    doc = daemon.api("GET", "/info")

    assert doc["Containers"] == len(everyone)
    assert doc["ContainersRunning"] == len(running) >= 1
    assert doc["ContainersStopped"] == len(everyone) - len(running)
    assert doc["Images"] == len(daemon.api("GET", "/images/json")) >= 1
    assert doc["NCPU"] == len(os.sched_getaffinity(0))
    assert doc["DockerRootDir"] == str(daemon.state_dir)
    assert f"Containers: {doc['Containers']}" in daemon.cli("info", check=True).stdout


@pytest.mark.parametrize(
    "path",
    [
        "/v1.44/version",
        "/v1.24/_ping",
        "/v1.44/info",
        "/v1.44/containers/json?all=1",
        "/v1.44/images/json",
    ],
)
def test_versioned_paths_answer_like_unversioned_ones(daemon, path):
    versioned = daemon.request("GET", path)
    plain = daemon.request("GET", re.sub(r"^/v1\.\d+", "", path))

    assert versioned.status == plain.status == 200
    assert versioned.headers["Content-Type"] == plain.headers["Content-Type"]


def test_a_versioned_create_and_inspect_work(daemon, name):
    body = json.dumps({"Image": "busybox:test", "Cmd": ["true"]}).encode()

    created = daemon.request(
        "POST",
        f"/v1.44/containers/create?name={name}",
        body,
        {"Content-Type": "application/json"},
    )
    inspected = daemon.request("GET", f"/v1.41/containers/{name}/json")

    assert created.status == 201
    assert inspected.json()["Id"] == created.json()["Id"]


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/version"),
        ("GET", "/containers/json"),
        ("GET", "/containers/nosuch-for-header/json"),
        ("POST", "/containers/create"),
        ("GET", "/no/such/page"),
        ("GET", "/events?since=1&until=2"),
        ("GET", "/metrics"),
    ],
)
def test_every_reply_carries_the_api_version_header(daemon, method, path):
    reply = daemon.request(method, path)

    assert reply.headers["Api-Version"] == API_VERSION, (reply.status, reply.body)


def test_a_streamed_reply_carries_the_api_version_header(daemon, name):
    daemon.cli("run", "--name", name, "busybox:test", "echo", "hi", check=True)

    reply = daemon.request("GET", f"/containers/{name}/logs?stdout=1")

    assert reply.status == 200
    assert reply.headers["Api-Version"] == API_VERSION


def test_metrics_report_the_memory_of_a_running_container(daemon, name):
    container_id = daemon.run_detached("--name", name, "busybox:test", "sleep", "300")
    series = re.compile(
        r'^container_memory_usage_bytes\{[^}]*name="'
        + re.escape(name)
        + r'"[^}]*\} ([0-9.e+]+)$',
        re.MULTILINE,
    )

    reply = daemon.request("GET", "/metrics")

    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    found = series.search(reply.body.decode())
    assert found, reply.body.decode()[:2000]
    assert float(found.group(1)) > 0
    assert f'id="/{daemon.cgroup_parent}/{container_id}"' in found.group(0)


def test_metrics_drop_a_container_once_it_is_removed(daemon, name):
    daemon.run_detached("--name", name, "busybox:test", "sleep", "300")
    assert f'name="{name}"' in daemon.request("GET", "/metrics").body.decode()

    daemon.cli("rm", "-f", name, check=True)

    wait_until(
        lambda: f'name="{name}"' not in daemon.request("GET", "/metrics").body.decode(),
        message="the series to go",
    )
