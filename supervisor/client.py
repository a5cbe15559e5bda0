"""A small HTTP/1.1 client of corrald's API over its unix socket.

httptools (the llhttp parser) reads the replies; this module writes the
requests, one per connection (sent with `Connection: close`), handles the
socket, and turns every fault into an error that says what went wrong. A
reply that breaks HTTP's rules, or ends early, raises ClientError naming the
fault, and never yields a partial body as if it were whole.

Every `corral` command loads this module, and the CLI's start-up time is
most of a short command's time, so it imports only what every command
needs: httptools rather than h11 (whose dataclasses pull in `inspect`, some
20 ms of CPU at each start), imported only once the first request has been
sent (its ~5 ms, mostly the `typing` module it pulls in, then overlap
corrald's work on the request: a `stop` reaches the container sooner),
`json` where it is first needed,
urllib.parse only for a query value that needs %-encoding, and the C
`_socket` module rather than `socket`, whose wrappers pull in enum and
selectors for nothing a one-request connection uses.
"""

import _socket
import os

RECEIVE_BYTES = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024

DEFAULT_HOST = "unix:///run/corral/corral.sock"

# Query values made only of these go out as they are; others are %-encoded.
_QUERY_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
)


class ClientError(Exception):
    """An error answer from the daemon, or no daemon at all (status 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _bad_reply(what: str) -> ClientError:
    return ClientError(0, f"corrald sent a malformed HTTP reply: {what}")


class Response:
    """A reply whose body is read as it arrives.

    It is also the parser's callback object: httptools calls the on_*
    methods from feed_data as it parses what the socket gave.
    """

    def __init__(self, sock: _socket.socket, method: str):
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self._sock: _socket.socket | None = sock
        import httptools  # here, after the request went out: see the module's doc

        self._parser = httptools.HttpResponseParser(self)
        self._parser_error = httptools.HttpParserError
        self._head_only = method == "HEAD"
        self._head_bytes = 0
        self._head_done = False
        self._done = False
        self._fault: str | None = None
        # A fault in the body found while the head was read: raised when
        # the body is, so that open() still gives the status and headers.
        self._body_error: ClientError | None = None
        self._received = 0
        self._buffer = bytearray()

    # ---- parser callbacks

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self._head_done = True
        self.status = self._parser.get_status_code()
        coding = self.headers.get("transfer-encoding")
        if self.status < 200:
            self._fault = f"unexpected informational status {self.status}"
        elif coding is not None and coding.strip().lower() != "chunked":
            self._fault = (
                f"Transfer-Encoding {coding!r}: only Transfer-Encoding: chunked "
                "is supported"
            )
        elif self._head_only:
            self._done = True

    def on_body(self, body: bytes) -> None:
        if not self._done:
            self._received += len(body)
            self._buffer += body

    def on_message_complete(self) -> None:
        self._done = True

    # ---- reading

    def _feed(self, data: bytes) -> None:
        if not self._head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except self._parser_error as err:
            # Bytes after a whole reply are not part of it; h11 and llhttp
            # alike see them as the start of a next reply, and it has none.
            if not self._done or self._fault:
                raise _bad_reply(self._fault or str(err) or type(err).__name__) from None
        if self._fault:
            raise _bad_reply(self._fault)
        if not self._head_done and self._head_bytes > MAX_HEAD_BYTES:
            raise _bad_reply(
                f"its head is over {MAX_HEAD_BYTES // 1024} KiB without ending"
            )

    def _receive(self) -> bytes:
        try:
            return self._sock.recv(RECEIVE_BYTES)
        except ConnectionResetError:
            raise ClientError(0, "corrald reset the connection") from None

    def _read_head(self, data: bytes) -> None:
        while True:
            try:
                self._feed(data)
            except ClientError as err:
                if not self._head_done or self._fault:
                    raise
                self._body_error = err
            if self._head_done:
                return
            data = self._receive()
            if not data:
                raise _bad_reply("the connection closed before the reply's head ended")

    def _at_eof(self) -> None:
        """The socket ended: the body is whole only if its end is the close."""
        if "transfer-encoding" in self.headers:
            raise _bad_reply("the connection closed in the middle of a chunked body")
        length = self.headers.get("content-length")
        if length is not None:
            raise _bad_reply(
                f"the connection closed after {self._received} bytes of a "
                f"{length}-byte body"
            )
        self._done = True

    def _fill(self) -> bool:
        """Read one more piece of the body; False at its end."""
        if self._done:
            self.close()
            return False
        try:
            if self._body_error is not None:
                raise self._body_error
            data = self._receive()
            if data:
                self._feed(data)
            else:
                self._at_eof()
        except BaseException:
            self.close()
            raise
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._done = True

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


def _quote(value: str) -> str:
    if all(c in _QUERY_SAFE for c in value):
        return value
    from urllib.parse import quote

    return quote(value, safe="")


def encode_query(query: dict) -> str:
    """`k=v&...` with values %-encoded; keys whose value is None are left out."""
    return "&".join(
        f"{_quote(str(k))}={_quote(str(v))}" for k, v in query.items() if v is not None
    )


def socket_path(host: str | None) -> str:
    host = host or os.environ.get("CORRAL_HOST") or DEFAULT_HOST
    if host.startswith("unix://"):
        return host[len("unix://") :]
    if host.startswith("/"):
        return host
    raise ClientError(0, f"unsupported host {host!r}: corral speaks to unix:///path sockets")


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


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
        if not _printable(path) or " " in path:
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
        head = _request_head(method, path, headers)
        sock = self._connect()
        try:
            return self._exchange(sock, method, head, body, "Transfer-Encoding" in headers)
        except BaseException:
            sock.close()
            raise

    def _exchange(self, sock, method, head, body, chunked) -> Response:
        try:
            if isinstance(body, bytes) and len(body) <= RECEIVE_BYTES:
                sock.sendall(head + body)
            else:
                sock.sendall(head)
                _send_body(sock, body, chunked)
        except (BrokenPipeError, ConnectionResetError):
            # corrald may answer and close before it has read all of a
            # body (an error about the request): its reply says why.
            pass
        response = Response(sock, method)
        try:
            first = sock.recv(RECEIVE_BYTES)
        except ConnectionResetError:
            first = b""
        if not first:
            raise ClientError(
                0, f"corrald at unix://{self.path} closed the connection without a reply"
            )
        response._read_head(first)
        if response.status >= 400:
            raise ClientError(response.status, _error_message(response))
        return response

    def _connect(self) -> _socket.socket:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
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
        data = self.open(method, path, query, body).read()
        if not data.strip():
            return None
        import json  # not before: stop, kill and rm get no body

        try:
            return json.loads(data)
        except ValueError as err:
            raise _bad_reply(f"the body of {method} {path} is not JSON ({err})") from None


def _request_head(method: str, target: str, headers: dict) -> bytes:
    """The request line and headers. Every part comes from corral's own code
    or has been checked; a CR, LF or other control character would split
    the request, so one is refused rather than sent."""
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers.items():
        value = str(value)
        if not (_printable(name) and _printable(value)) or ":" in name:
            raise ClientError(
                0, f"cannot send the header {name!r}: {value!r} is not printable ASCII"
            )
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _send_body(sock: _socket.socket, body, chunked: bool) -> None:
    if body is None:
        return
    if isinstance(body, bytes):
        sock.sendall(body)
        return
    while chunk := body.read(RECEIVE_BYTES):
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
    if chunked:
        sock.sendall(b"0\r\n\r\n")


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
