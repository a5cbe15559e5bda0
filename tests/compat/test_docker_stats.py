"""`docker stats` against corrald shows each container's figures."""

import time

from dockercli import needs_docker, ok

pytestmark = needs_docker


def test_docker_stats_no_stream_prints_the_container_with_its_limit(docker, case):
    ok(docker("run", "-d", "--name", case, "--cpus", "0.5", "-m", "64m",
              "busybox:test", "sh", "-c", "yes > /dev/null"))
    time.sleep(1)

    out = ok(docker("stats", "--no-stream", case)).stdout.splitlines()

    assert out[0].split()[:3] == ["CONTAINER", "ID", "NAME"]
    row = out[1]
    assert case in row
    assert "/ 64MiB" in row
    cpu = float(row.split()[2].rstrip("%"))
    assert 20 <= cpu <= 70, row


def test_docker_stats_format_shows_cpu_and_pids(docker, case):
    ok(docker("run", "-d", "--name", case, "busybox:test", "sleep", "300"))

    out = ok(docker("stats", "--no-stream", "--format",
                    "{{.Name}} {{.PIDs}} {{.MemUsage}}", case)).stdout.split()

    assert out[0] == case
    assert out[1] == "1"
