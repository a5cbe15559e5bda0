"""Start a real corrald for tests: its own state dir, socket and cgroup parent,
so it never meets a corrald the host runs."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from supervisor.client import Client, ClientError

BIN_DIR = Path(sys.executable).parent
CGROUP_ROOT = Path("/sys/fs/cgroup")


class Daemon:
    def __init__(self, root: Path, cgroup_parent: str | None = None):
        self.root = root
        self.socket = root / "corral.sock"
        self.cgroup_parent = cgroup_parent or f"corral-test-{secrets.token_hex(4)}"
        self.log_path = root / "corrald.log"
        self.proc: subprocess.Popen | None = None
        self.client = Client(f"unix://{self.socket}")

    def start(self, timeout_s: float = 15) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(BIN_DIR / "corrald"), "--root", str(self.root / "state"),
             "--socket", str(self.socket), "--cgroup-parent", self.cgroup_parent,
             "--log-level", "debug"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corrald exited early:\n{self.log_path.read_text()}")
            try:
                self.client.call("GET", "/_ping")
                return
            except ClientError:
                time.sleep(0.05)
        raise RuntimeError(f"corrald did not answer:\n{self.log_path.read_text()}")

    def stop(self, timeout_s: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def crash(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> None:
        assert self.stop() == 0, self.log_path.read_text()
        self.start()

    def cli(self, *args, check=False, timeout=60, input=None) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(BIN_DIR / "corral"), "-H", f"unix://{self.socket}", *args],
            capture_output=True, text=True, timeout=timeout, input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"corral {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def api(self, method, path, body=None, **query):
        return self.client.call(method, path, query or None, body)

    def inspect(self, ref: str) -> dict:
        return self.api("GET", f"/containers/{ref}/json")

    def load(self, tarball: Path) -> str:
        with open(tarball, "rb") as f:
            response = self.client.open("POST", "/images/load", body=f,
                                        headers={"Content-Length": str(tarball.stat().st_size)})
            return response.read().decode()

    def cleanup_cgroups(self) -> None:
        """Remove the test's cgroup parents (only those this test run created)."""
        for parent in CGROUP_ROOT.glob(f"*/{self.cgroup_parent}"):
            for child in sorted(parent.rglob("*"), reverse=True):
                if child.is_dir():
                    os.rmdir(child)
            os.rmdir(parent)
        v2 = CGROUP_ROOT / self.cgroup_parent
        if v2.is_dir():
            os.rmdir(v2)


def events_json(lines: str) -> list[dict]:
    return [json.loads(line) for line in lines.splitlines() if line.strip()]
