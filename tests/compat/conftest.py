"""A corrald of the compat suite's own, shared by its tests, with
busybox:test loaded; tests give their containers unique names."""

import re
from pathlib import Path

import pytest
from daemon import Daemon, attach_daemon_logs, open_daemon, unique_name
from imagebuild import write_busybox_archive


@pytest.fixture(scope="session")
def compat_busybox_archive(tmp_path_factory) -> Path:
    return write_busybox_archive(tmp_path_factory.mktemp("images") / "busybox.tar")


@pytest.fixture(scope="session")
def daemon(compat_busybox_archive) -> Daemon:
    with open_daemon(compat_busybox_archive) as started:
        yield started


@pytest.fixture
def name(request) -> str:
    """A container name no other test uses, starting with the test's name."""
    words = re.sub(r"[^a-zA-Z0-9_.-]", "-", request.node.name.removeprefix("test_"))
    return unique_name(words[:40].strip("-_."))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    attach_daemon_logs(item, outcome.get_result())
