"""HTTP/1.1 over a unix socket, with h11 doing all the parsing.

A handler receives a Request and returns a Response (a whole body) or a
StreamResponse (an async iterator of chunks, sent with chunked encoding).
A streamed response closes the connection when it ends, as Docker's
hijacked and streaming endpoints do; while it streams, a watcher reads the
socket so a client that hangs up cancels the stream instead of leaving it
parked forever.
"""

import json
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import h11
import structlog
import trio

log = structlog.get_logger()

RECEIVE_BYTES = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_JSON_BODY_BYTES = 16 * 1024 * 1024


class ClientGone(Exception):
    pass


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    _conn: h11.Connection = field(repr=False)
    _stream: trio.SocketStream = field(repr=False)
    _body_done: bool = False

    async def iter_body(self) -> AsyncIterator[bytes]:
        if self._conn.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        while not self._body_done:
            event = await _next_event(self._conn, self._stream)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._body_done = True
            else:
                raise ClientGone("connection closed while reading the request body")

    async def body(self, max_bytes: int = MAX_JSON_BODY_BYTES) -> bytes:
        chunks, size = [], 0
        async for chunk in self.iter_body():
            size += len(chunk)
            if size > max_bytes:
                from .errors import BadParameter

                raise BadParameter(
                    f"request body is larger than {max_bytes >> 20} MiB; corral "
                    "refuses bodies that big outside image loads"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def json(self):
        raw = await self.body()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as err:
            from .errors import BadParameter

            raise BadParameter(f"request body is not valid JSON: {err}") from None

    async def _send(self, event) -> None:
        await self._stream.send_all(self._conn.send(event))


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class StreamResponse:
    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class UpgradeResponse:
    """A raw byte stream after "101 UPGRADED", as Docker's attach hijacks
    the connection; a client that did not ask to upgrade gets a plain
    streamed 200 instead."""

    chunks: AsyncIterator[bytes]
    content_type: str = "application/vnd.docker.multiplexed-stream"
    status: int = 101


def json_response(doc, status: int = 200) -> Response:
    return Response(status, json.dumps(doc).encode() + b"\n")


Handler = Callable[[Request], Awaitable[Response | StreamResponse | UpgradeResponse]]


async def _next_event(conn: h11.Connection, stream: trio.SocketStream):
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(RECEIVE_BYTES)
        conn.receive_data(data)


def listen_unix(path: Path, group: str) -> trio.socket.SocketType:
    """Bind the API socket with mode 0660, group-owned by `group` if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and stat.S_ISSOCK(path.lstat().st_mode):
        path.unlink()
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock._sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(128)
    _chown_group(path, group)
    return sock


def _chown_group(path: Path, group: str) -> None:
    import grp

    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return
    os.chown(path, 0, gid)


async def serve(listener: trio.socket.SocketType, handler: Handler) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            try:
                sock, _ = await listener.accept()
            except trio.ClosedResourceError:
                # The daemon closed the listener to shut down: accept no one
                # new, and let open connections run until they are cancelled.
                return
            nursery.start_soon(_serve_connection, trio.SocketStream(sock), handler)


async def _serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    try:
        async with stream:
            await _serve_requests(conn, stream, handler)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone):
        pass
    except h11.RemoteProtocolError as err:
        log.debug("http_protocol_error", error=str(err))
    except Exception as err:
        # The boundary of one client connection: a fault here is logged and
        # ends this connection only, never the daemon.
        log.exception("api_connection_failed", error=str(err))


async def _serve_requests(conn, stream, handler) -> None:
    while True:
        event = await _next_event(conn, stream)
        if not isinstance(event, h11.Request):
            return
        request = _make_request(event, conn, stream)
        response = await handler(request)
        if not request._body_done:
            async for _ in request.iter_body():
                pass
        if isinstance(response, UpgradeResponse):
            await _send_upgrade(conn, stream, request, response)
            return
        if isinstance(response, StreamResponse):
            await _send_stream(conn, stream, response)
            return
        await _send_whole(conn, stream, request.method, response)
        if conn.our_state is h11.MUST_CLOSE:
            return
        conn.start_next_cycle()


def _make_request(event: h11.Request, conn, stream) -> Request:
    target = urlsplit(event.target.decode("latin-1"))
    headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
    query = dict(parse_qsl(target.query, keep_blank_values=True))
    return Request(event.method.decode(), target.path, query, headers, conn, stream)


def _base_headers(content_type: str, extra) -> list[tuple[str, str]]:
    from . import API_VERSION, __version__

    return [
        ("Content-Type", content_type),
        ("Api-Version", API_VERSION),
        ("Docker-Experimental", "false"),
        ("Ostype", "linux"),
        ("Server", f"corral/{__version__}"),
        *extra,
    ]


async def _send_whole(conn, stream, method: str, response: Response) -> None:
    headers = _base_headers(response.content_type, response.headers)
    no_body = response.status in (204, 304)
    if not no_body:
        headers.append(("Content-Length", str(len(response.body))))
    out = conn.send(h11.Response(status_code=response.status, headers=headers))
    if response.body and method != "HEAD" and not no_body:
        out += conn.send(h11.Data(data=response.body))
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)


async def _send_stream(conn, stream, response: StreamResponse) -> None:
    headers = _base_headers(response.content_type, response.headers)
    headers.append(("Connection", "close"))
    await stream.send_all(
        conn.send(h11.Response(status_code=response.status, headers=headers))
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_when_client_leaves, stream, nursery.cancel_scope)
        async for chunk in response.chunks:
            if chunk:
                await stream.send_all(conn.send(h11.Data(data=chunk)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        nursery.cancel_scope.cancel()


async def _send_upgrade(conn, stream, request: Request, response: UpgradeResponse):
    if "upgrade" not in request.headers.get("connection", "").lower():
        await _send_stream(conn, stream, StreamResponse(response.chunks, 200,
                                                        response.content_type))
        return
    headers = _base_headers(response.content_type, [])
    headers += [("Connection", "Upgrade"), ("Upgrade", "tcp")]
    await stream.send_all(conn.send(h11.InformationalResponse(
        status_code=101, headers=headers, reason=b"UPGRADED")))
    # A hijacking client half-closes its side when it has no stdin to send,
    # so end-of-input means nothing here; a client that leaves for good is
    # noticed when a send fails.
    async for chunk in response.chunks:
        if chunk:
            await stream.send_all(chunk)


async def _cancel_when_client_leaves(stream, scope: trio.CancelScope) -> None:
    try:
        while await stream.receive_some(RECEIVE_BYTES):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()
