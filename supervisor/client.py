"""A small client of corrald's API over its unix socket, with h11 parsing.

Kept free of heavy imports: every `corral` command loads it.
"""

import json
import os
import socket
from urllib.parse import urlencode

import h11

RECEIVE_BYTES = 64 * 1024

DEFAULT_HOST = "unix:///run/corral/corral.sock"


class ClientError(Exception):
    """An error answer from the daemon, or no daemon at all (status 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Response:
    """A reply whose body is read as it arrives (h11 does the parsing)."""

    def __init__(self, sock: socket.socket, conn, event):
        self.status = event.status_code
        self.reason = event.reason.decode("latin-1")
        self.headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        self._sock = sock
        self._conn = conn
        self._buffer = bytearray()
        self._done = False

    def _fill(self) -> bool:
        """Read one more piece of the body; False at its end."""
        while not self._done:
            event = _next_event(self._conn, self._sock)
            if isinstance(event, h11.Data):
                self._buffer += event.data
                return True
            if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                self._done = True
                self._sock.close()
        return False

    def read(self, size: int = -1) -> bytes:
        while (size < 0 or len(self._buffer) < size) and self._fill():
            pass
        if size < 0:
            size = len(self._buffer)
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def __iter__(self):
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                yield self.read(newline + 1)
            elif not self._fill():
                if self._buffer:
                    yield self.read()
                return


def _next_event(conn, sock: socket.socket):
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(sock.recv(RECEIVE_BYTES))


def _send_body(conn, sock: socket.socket, body) -> None:
    if body is None:
        pass
    elif isinstance(body, bytes):
        sock.sendall(conn.send(h11.Data(data=body)))
    else:
        while chunk := body.read(RECEIVE_BYTES):
            sock.sendall(conn.send(h11.Data(data=chunk)))
    end = conn.send(h11.EndOfMessage())
    # Empty unless the body is chunked. Sending nothing at all matters: a
    # server that answered a bodiless request may have closed already, and
    # a zero-byte send to a closed socket fails with EPIPE.
    if end:
        sock.sendall(end)


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
             headers: dict | None = None) -> Response:
        """Send a request; return the response with its body unread."""
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Host": "corral", **(headers or {})}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if isinstance(body, bytes):
            headers["Content-Length"] = str(len(body))
        elif body is None and method in ("POST", "PUT"):
            headers["Content-Length"] = "0"
        sock = self._connect()
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method=method, target=path, headers=list(headers.items()))
        sock.sendall(conn.send(request))
        _send_body(conn, sock, body)
        event = _next_event(conn, sock)
        if not isinstance(event, h11.Response):
            raise ClientError(0, f"corrald at unix://{self.path} closed the connection")
        response = Response(sock, conn, event)
        if response.status >= 400:
            raise ClientError(response.status, _error_message(response))
        return response

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as err:
            sock.close()
            raise ClientError(
                0,
                f"Cannot connect to the corral daemon at unix://{self.path} "
                f"({err.strerror}). Is corrald running?",
            ) from None
        except PermissionError:
            sock.close()
            raise ClientError(
                0,
                f"permission denied on unix://{self.path}: run as root or join the "
                "corral group",
            ) from None
        return sock

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
        return data.decode(errors="replace").strip() or response.reason or str(response.status)


def read_frames(response):
    """Yield (stream, bytes) from Docker's multiplexed 8-byte-header stream."""
    while True:
        header = response.read(8)
        if len(header) < 8:
            return
        size = int.from_bytes(header[4:8], "big")
        yield header[0], response.read(size)
