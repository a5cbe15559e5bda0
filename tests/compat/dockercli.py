"""Finding the real docker client, and what its tests share."""

import os
import shutil
import subprocess

import pytest

DOCKER = shutil.which("docker") or (
    "/usr/local/bin/docker" if os.access("/usr/local/bin/docker", os.X_OK) else None
)

needs_docker = pytest.mark.skipif(
    DOCKER is None,
    reason="needs the docker client: no `docker` on PATH or at /usr/local/bin/docker",
)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The result of a docker command that must succeed."""
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result
