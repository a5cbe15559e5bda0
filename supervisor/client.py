"""A small HTTP/1.1 client of corrald's API over its unix socket.

h11 frames the requests and parses the replies; this module adds the
socket handling, one request per connection (sent with
`Connection: close`), and errors that say what went wrong. A reply that
breaks HTTP's rules, or ends early, raises ClientError naming the fault,
and never yields a partial body as if it were whole.

Every `corral` command loads this module, so `json` is imported where it is
first needed.
"""

import os
import socket
from urllib.parse import quote

import h11

RECEIVE_BYTES = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024

DEFAULT_HOST = "unix:///run/corral/corral.sock"


class ClientError(Exception):
    """An error answer from the daemon, or no daemon at all (status 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _bad_reply(what: str) -> ClientError:
    return ClientError(0, f"corrald sent a malformed HTTP reply: {what}")


def _next_event(conn: h11.Connection, sock: socket.socket):
    """The next h11 event of the reply, reading from the socket as needed."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as err:
            raise _bad_reply(str(err) or type(err).__name__) from None
        if event is not h11.NEED_DATA:
            return event
        try:
            data = sock.recv(RECEIVE_BYTES)
        except ConnectionResetError:
            raise ClientError(0, "corrald reset the connection") from None
        conn.receive_data(data)


class Response:
    """A reply whose body is read as it arrives."""

    def __init__(self, sock: socket.socket, conn: h11.Connection, event: h11.Response):
        self.status = event.status_code
        self.reason = event.reason.decode("latin-1")
        self.headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        self._sock = sock
        self._conn: h11.Connection | None = conn
        self._buffer = bytearray()

    def _fill(self) -> bool:
        """Read one more piece of the body; False at its end."""
        while self._conn is not None:
            try:
                event = _next_event(self._conn, self._sock)
            except BaseException:
                self.close()
                raise
            if isinstance(event, h11.Data):
                self._buffer += event.data
                return True
            if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                self.close()
        return False

    def close(self) -> None:
        self._conn = None
        self._sock.close()

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


def encode_query(query: dict) -> str:
    """`k=v&...` with values %-encoded; keys whose value is None are left out."""
    return "&".join(
        f"{quote(str(k), safe='')}={quote(str(v), safe='')}"
        for k, v in query.items()
        if v is not None
    )


def socket_path(host: str | None) -> str:
    host = host or os.environ.get("CORRAL_HOST") or DEFAULT_HOST
    if host.startswith("unix://"):
        return host[len("unix://") :]
    if host.startswith("/"):
        return host
    raise ClientError(0, f"unsupported host {host!r}: corral speaks to unix:///path sockets")


class Client:
    def __init__(self, host: str | None = None):
        self.path = socket_path(host)

    def open(
        self,
        method: str,
        path: str,
        query: dict | None = None,
        body=None,
        headers: dict | None = None,
    ) -> Response:
        """Send a request; return the response with its body unread.

        `body` is a dict or list (sent as JSON), bytes, or a binary file
        object, which is streamed: with the caller's Content-Length header
        when given, chunked otherwise. An error status raises ClientError
        with the daemon's message.
        """
        if not (path.isascii() and path.isprintable()) or " " in path:
            raise ClientError(
                0,
                f"cannot request {path!r}: corral sends a path only as "
                "printable ASCII without spaces",
            )
        if query and (encoded := encode_query(query)):
            path += "?" + encoded
        headers = {"Host": "corral", **(headers or {}), "Connection": "close"}
        if isinstance(body, (dict, list)):
            import json

            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if isinstance(body, bytes):
            headers["Content-Length"] = str(len(body))
        elif body is None and method in ("POST", "PUT"):
            headers["Content-Length"] = "0"
        elif body is not None and "Content-Length" not in headers:
            headers["Transfer-Encoding"] = "chunked"
        sock = self._connect()
        try:
            return self._exchange(sock, method, path, headers, body)
        except BaseException:
            sock.close()
            raise

    def _exchange(self, sock, method, path, headers, body) -> Response:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        request = h11.Request(method=method, target=path, headers=list(headers.items()))
        try:
            sock.sendall(conn.send(request))
            _send_body(conn, sock, body)
        except (BrokenPipeError, ConnectionResetError):
            # corrald may answer and close before it has read all of a
            # body (an error about the request): its reply says why.
            pass
        try:
            first = sock.recv(RECEIVE_BYTES)
        except ConnectionResetError:
            first = b""
        if not first:
            raise ClientError(
                0, f"corrald at unix://{self.path} closed the connection without a reply"
            )
        conn.receive_data(first)
        event = _next_event(conn, sock)
        if isinstance(event, h11.InformationalResponse):
            raise _bad_reply(f"unexpected informational status {event.status_code}")
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
        import json

        data = self.open(method, path, query, body).read()
        try:
            return json.loads(data) if data.strip() else None
        except ValueError as err:
            raise _bad_reply(f"the body of {method} {path} is not JSON ({err})") from None


def _send_body(conn: h11.Connection, sock: socket.socket, body) -> None:
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


def _error_message(response: Response) -> str:
    import json

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
