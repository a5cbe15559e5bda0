"""A small client of corrald's API over its unix socket (stdlib http.client).

Kept free of heavy imports: every `corral` command loads it.
"""

import http.client
import json
import os
import socket
from urllib.parse import urlencode

DEFAULT_HOST = "unix:///run/corral/corral.sock"


class ClientError(Exception):
    """An error answer from the daemon, or no daemon at all (status 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def socket_path(host: str | None) -> str:
    host = host or os.environ.get("CORRAL_HOST") or DEFAULT_HOST
    if host.startswith("unix://"):
        return host[len("unix://"):]
    if host.startswith("/"):
        return host
    raise ClientError(0, f"unsupported host {host!r}: corral speaks to unix:///path sockets")


class Client:
    def __init__(self, host: str | None = None):
        self.path = socket_path(host)

    def open(self, method: str, path: str, query: dict | None = None, body=None,
             headers: dict | None = None) -> http.client.HTTPResponse:
        """Send a request; return the response with its body unread."""
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = _UnixConnection(self.path, None)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise ClientError(
                0,
                f"Cannot connect to the corral daemon at unix://{self.path} ({err.strerror}). "
                "Is corrald running?",
            ) from None
        except PermissionError:
            raise ClientError(
                0,
                f"permission denied on unix://{self.path}: run as root or join the "
                "corral group",
            ) from None
        if response.status >= 400:
            raise ClientError(response.status, _error_message(response))
        return response

    def call(self, method: str, path: str, query: dict | None = None, body=None):
        """Send a request and decode its JSON answer (None for an empty one)."""
        response = self.open(method, path, query, body)
        data = response.read()
        return json.loads(data) if data.strip() else None


def _error_message(response) -> str:
    data = response.read()
    try:
        return json.loads(data)["message"]
    except (ValueError, KeyError, TypeError):
        return data.decode(errors="replace").strip() or response.reason


def read_frames(response):
    """Yield (stream, bytes) from Docker's multiplexed 8-byte-header stream."""
    while True:
        header = response.read(8)
        if len(header) < 8:
            return
        size = int.from_bytes(header[4:8], "big")
        yield header[0], response.read(size)
