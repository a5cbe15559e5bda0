"""A corrald of the compat suite's own, shared by its tests, with
busybox:test loaded; tests give their containers unique names."""

import os
import re
import subprocess
from pathlib import Path

import pytest
from daemon import Daemon, attach_daemon_logs, open_daemon, unique_name
from dockercli import DOCKER
from imagebuild import write_busybox_archive


@pytest.fixture(scope="session")
def compat_busybox_archive(tmp_path_factory) -> Path:
    return write_busybox_archive(tmp_path_factory.mktemp("images") / "busybox.tar")


@pytest.fixture(scope="session")
def daemon(compat_busybox_archive) -> Daemon:
    with open_daemon(compat_busybox_archive) as started:
        yield started


@pytest.fixture(scope="session")
def docker_env(daemon, tmp_path_factory) -> dict:
    # A config dir of its own, so no user context, credential helper or
    # plugin of the host's changes what the client does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(
        DOCKER_HOST=f"unix://{daemon.socket}",
        DOCKER_CONFIG=str(tmp_path_factory.mktemp("docker-config")),
        DOCKER_CLI_HINTS="false",
    )
    return env


@pytest.fixture
def docker(docker_env):
    """Runs the real docker client against the suite's corrald."""

    def run(*args, timeout=60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [DOCKER, *args], capture_output=True, text=True, check=False,
            env=docker_env, timeout=timeout,
        )

    return run


@pytest.fixture
def case(docker, name):
    """A name prefix for the test's containers, all removed afterwards."""
    yield name
    ids = docker("ps", "-aq", "--filter", f"name=^{name}").stdout.split()
    if ids:
        docker("rm", "-f", *ids)


@pytest.fixture
def name(request) -> str:
    """A container name no other test uses, starting with the test's name."""
    words = re.sub(r"[^a-zA-Z0-9_.-]", "-", request.node.name.removeprefix("test_"))
    return unique_name(words[:40].strip("-_."))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    attach_daemon_logs(item, outcome.get_result())
