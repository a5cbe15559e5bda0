"""Shared test helpers: tests/ on the import path, and a clear skip for tests
that need root."""

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real namespaces, mounts and cgroups")
    for item in items:
        if "integration" in item.nodeid or "compat" in item.nodeid:
            item.add_marker(skip)
