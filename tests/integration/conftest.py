"""Fixtures that start a real corrald.

`daemon` is one corrald shared by the whole session, so tests that use it
give their containers unique names (`name` fixture) and never restart it.
`fresh_daemon` is a corrald of the test's own, for tests that stop, restart
or kill the daemon.
"""

import re
from pathlib import Path

import pytest
from daemon import Daemon, attach_daemon_logs, open_daemon, unique_name
from imagebuild import write_busybox_archive


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory) -> Path:
    return write_busybox_archive(tmp_path_factory.mktemp("images") / "busybox.tar")


@pytest.fixture(scope="session")
def daemon(busybox_archive) -> Daemon:
    with open_daemon(busybox_archive) as started:
        yield started


@pytest.fixture
def fresh_daemon(busybox_archive) -> Daemon:
    with open_daemon(busybox_archive) as started:
        yield started


@pytest.fixture
def name(request) -> str:
    """A container name no other test uses, starting with the test's name."""
    words = re.sub(r"[^a-zA-Z0-9_.-]", "-", request.node.name.removeprefix("test_"))
    return unique_name(words[:40].strip("-_."))


@pytest.fixture
def case(daemon, name):
    """A name prefix for the test's containers on the shared daemon; every
    container whose name starts with it is removed afterwards."""
    yield name
    for container in daemon.api("GET", "/containers/json", all=1):
        if container["Names"][0].lstrip("/").startswith(name):
            daemon.api("DELETE", f"/containers/{container['Id']}", force=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    attach_daemon_logs(item, outcome.get_result())
