"""The CLI's HTTP client against corrald's real HTTP server code over a real
unix socket, and against a raw socket server for replies corrald would never
send: truncated, malformed, or framed in ways the client must not trust."""

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import tempfile
import threading

import pytest
import trio

from supervisor.client import Client, ClientError, read_frames, socket_path
from supervisor.server import (
    Response,
    StreamResponse,
    json_response,
    listen_unix,
    serve,
)

GROUP_THAT_DOES_NOT_EXIST = "corral-test-no-such-group"
LEAKED_BYTES = b"bytes after the reply"


@contextlib.contextmanager
def short_dir():
    # A unix socket path must fit in 108 bytes; pytest's tmp_path, named
    # after these long test names, may not.
    directory = tempfile.mkdtemp(prefix="corral-client-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Server:
    """supervisor.server.serve with `handler`, run by trio in a thread."""

    def __init__(self, handler, path: str):
        self.handler = handler
        self.path = path
        self.token = None
        self._scope = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=trio.run, args=(self._main,), daemon=True
        )

    async def _main(self):
        from pathlib import Path

        listener = listen_unix(Path(self.path), GROUP_THAT_DOES_NOT_EXIST)
        with trio.CancelScope() as self._scope:
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await serve(listener, self.handler)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the test server did not start"

    def stop(self) -> None:
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self.token)
        self._thread.join(10)

    def call_soon(self, fn) -> None:
        """Run fn() on the server's trio thread."""
        trio.from_thread.run_sync(fn, trio_token=self.token)


@contextlib.contextmanager
def serving(handler):
    """A Client talking to corrald's HTTP server code running `handler`."""
    with short_dir() as directory:
        server = Server(handler, os.path.join(directory, "api.sock"))
        server.start()
        try:
            yield Client(f"unix://{server.path}"), server
        finally:
            server.stop()


@contextlib.contextmanager
def raw_server(reply: bytes, close: bool = True):
    """A Client whose one request gets `reply`, byte for byte. With
    close=False the connection stays open until the test ends; should the
    client wait for more than the reply holds, it gets LEAKED_BYTES after
    3 s, which no test expects to read."""
    with short_dir() as directory:
        path = os.path.join(directory, "raw.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        finished = threading.Event()

        def answer():
            conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (data := conn.recv(65536)):
                    head += data
                conn.sendall(reply)
                if not close and not finished.wait(3):
                    conn.sendall(LEAKED_BYTES)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            yield Client(f"unix://{path}")
        finally:
            finished.set()
            thread.join(10)
            listener.close()


async def echo(request):
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": await request.json(),
        }
    )


# ---- replies corrald sends ---------------------------------------------------


def test_a_whole_json_reply_is_decoded_and_the_request_arrives_intact():
    with serving(echo) as (client, _):
        doc = client.call(
            "POST",
            "/containers/create",
            {"name": "web 1/ü&x=y", "skip": None, "t": 3},
            {"Image": "busybox:test", "Cmd": ["sh", "-c", "echo hi"]},
        )
    assert doc["method"] == "POST"
    assert doc["path"] == "/containers/create"
    assert doc["query"] == {"name": "web 1/ü&x=y", "t": "3"}
    assert doc["body"] == {"Image": "busybox:test", "Cmd": ["sh", "-c", "echo hi"]}
    assert doc["headers"]["content-type"] == "application/json"


def test_a_post_without_a_body_says_its_length_is_zero():
    with serving(echo) as (client, _):
        doc = client.call("POST", "/containers/x/start")
    assert doc["headers"]["content-length"] == "0"
    assert doc["body"] == {}


def test_reply_headers_are_read_with_lower_case_names():
    with serving(echo) as (client, _):
        response = client.open("GET", "/version")
        response.read()
    assert response.status == 200
    assert response.headers["api-version"] == "1.44"
    assert response.headers["content-type"] == "application/json"


def test_a_chunked_stream_is_read_as_it_arrives():
    proceed = trio.Event()

    async def handler(request):
        async def chunks():
            yield b"first line\n"
            # The second chunk waits for the test to have read the first:
            # a client that buffered the whole reply would never see it.
            with trio.move_on_after(10):
                await proceed.wait()
            yield b"second line\n" if proceed.is_set() else b"timed out\n"

        return StreamResponse(chunks())

    with serving(handler) as (client, server):
        response = client.open("GET", "/events")
        lines = iter(response)
        assert next(lines) == b"first line\n"
        server.call_soon(proceed.set)
        assert list(lines) == [b"second line\n"]
    assert response.headers["transfer-encoding"] == "chunked"


def test_lines_are_joined_across_chunks_and_a_last_unended_line_is_kept():
    async def handler(request):
        async def chunks():
            for piece in (b"a", b"b\nc", b"\n", b"\nta", b"il"):
                yield piece

        return StreamResponse(chunks())

    with serving(handler) as (client, _):
        assert list(client.open("GET", "/events")) == [b"ab\n", b"c\n", b"\n", b"tail"]


def test_multiplexed_frames_split_across_chunks_come_out_whole():
    frames = [(1, b"out-1\n"), (2, b"err-1\n"), (1, b"x" * 70_000)]
    stream = b"".join(
        bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data
        for kind, data in frames
    )

    async def handler(request):
        async def chunks():
            for at in range(0, len(stream), 5):
                yield stream[at : at + 5]

        return StreamResponse(
            chunks(), content_type="application/vnd.docker.raw-stream"
        )

    with serving(handler) as (client, _):
        assert list(read_frames(client.open("GET", "/containers/x/logs"))) == frames


def test_a_204_reply_has_no_body_and_call_gives_none():
    async def handler(request):
        return Response(204)

    with serving(handler) as (client, _):
        assert client.call("POST", "/containers/x/stop") is None
        response = client.open("POST", "/containers/x/stop")
        assert (response.status, response.read()) == (204, b"")


def test_a_304_reply_is_not_an_error_and_has_no_body():
    async def handler(request):
        return Response(304)

    with serving(handler) as (client, _):
        response = client.open("POST", "/containers/x/start")
        assert (response.status, response.read()) == (304, b"")


def test_an_error_reply_raises_with_the_daemons_message():
    async def handler(request):
        return json_response({"message": "No such container: web"}, 404)

    with serving(handler) as (client, _), pytest.raises(ClientError) as caught:
        client.call("GET", "/containers/web/json")
    assert (caught.value.status, caught.value.message) == (
        404,
        "No such container: web",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"plain words\n", "plain words"),
        (b"", "500"),
        (b'{"other": 1}', '{"other": 1}'),
    ],
)
def test_an_error_reply_without_a_json_message_uses_its_text_or_status(body, message):
    async def handler(request):
        return Response(500, body, "text/plain")

    with serving(handler) as (client, _), pytest.raises(ClientError) as caught:
        client.call("GET", "/info")
    assert (caught.value.status, caught.value.message) == (500, message)


@pytest.mark.parametrize(
    "with_length", [True, False], ids=["content-length", "chunked"]
)
def test_a_file_body_is_streamed_whole(with_length):
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def handler(request):
        digest, size = hashlib.sha256(), 0
        async for chunk in request.iter_body():
            digest.update(chunk)
            size += len(chunk)
        return json_response(
            {
                "size": size,
                "sha256": digest.hexdigest(),
                "chunked": request.headers.get("transfer-encoding") == "chunked",
            }
        )

    headers = {"Content-Length": str(len(payload))} if with_length else {}
    with serving(handler) as (client, _):
        response = client.open(
            "POST", "/images/load", body=io.BytesIO(payload), headers=headers
        )
        doc = json.loads(response.read())
    assert doc == {
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "chunked": not with_length,
    }


def test_a_bytes_body_is_sent_with_its_length():
    async def handler(request):
        body = await request.body()
        return Response(200, body, "application/octet-stream")

    with serving(handler) as (client, _):
        assert client.open("PUT", "/x", body=b"\x00raw\xff").read() == b"\x00raw\xff"


def test_one_client_serves_many_requests_one_connection_each():
    with serving(echo) as (client, _):
        for index in range(20):
            assert client.call("GET", f"/n/{index}")["path"] == f"/n/{index}"


# ---- replies only a broken peer sends ----------------------------------------


def test_a_body_without_length_or_chunks_ends_when_the_connection_closes():
    with raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello\nworld"
    ) as client:
        assert list(client.open("GET", "/x")) == [b"hello\n", b"world"]


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
    ],
    ids=["204", "304"],
)
def test_204_and_304_replies_are_done_without_waiting_for_a_body(reply):
    # The raw server keeps the connection open: reading a body here would hang.
    with raw_server(reply, close=False) as client:
        response = client.open("GET", "/x")
        assert response.read() == b""


def test_a_head_reply_is_done_without_waiting_for_its_announced_body():
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    with raw_server(reply, close=False) as client:
        assert client.open("HEAD", "/_ping").read() == b""


def test_chunk_extensions_and_trailers_are_accepted():
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    with raw_server(reply, close=False) as client:
        assert client.open("GET", "/x").read() == b"hello"


MALFORMED_AT_OPEN = [
    (b"", "closed the connection without a reply"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "Expected HTTP/"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "Invalid response status"),
    (b"HTTP/1.1 200 OK\r\nContent-Le", "closed before the reply's head ended"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "Invalid header token"),
    (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "Invalid header token"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "Invalid character in Content-Length"),
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "Duplicate Content-Length",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "only Transfer-Encoding: chunked is supported",
    ),
    (
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "unexpected informational status 101",
    ),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000, "head is over 64 KiB"),
]


@pytest.mark.parametrize(("reply", "expected"), MALFORMED_AT_OPEN)
def test_a_malformed_reply_head_raises_a_clear_error(reply, expected):
    with raw_server(reply) as client, pytest.raises(ClientError) as caught:
        client.open("GET", "/x")
    assert caught.value.status == 0
    assert expected in caught.value.message


MALFORMED_BODIES = [
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        "closed after 3 bytes of a 10-byte body",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        "in the middle of a chunked body",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        "in the middle of a chunked body",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "Invalid character in chunk size",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
        "Expected LF after chunk data",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
        "in the middle of a chunked body",
    ),
]


@pytest.mark.parametrize(("reply", "expected"), MALFORMED_BODIES)
def test_a_truncated_or_malformed_body_raises_instead_of_ending_quietly(
    reply, expected
):
    with raw_server(reply) as client:
        response = client.open("GET", "/x")
        with pytest.raises(ClientError) as caught:
            response.read()
    assert caught.value.status == 0
    assert "corrald sent a malformed HTTP reply" in caught.value.message
    assert expected in caught.value.message


def test_a_body_that_is_not_json_is_named_by_call():
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope"
    with raw_server(reply) as client, pytest.raises(ClientError, match="is not JSON"):
        client.call("GET", "/info")


def test_an_early_error_reply_wins_over_a_body_the_server_stopped_reading():
    # The server answers after the request head and closes with most of a
    # 16 MiB body unread: the client's send fails, and the reply says why.
    body = b'{"message": "too big"}'
    reply = b"HTTP/1.1 413 Too Large\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    with raw_server(reply) as client, pytest.raises(ClientError) as caught:
        client.open("POST", "/images/load", body=b"x" * (16 << 20))
    assert (caught.value.status, caught.value.message) == (413, "too big")


# ---- reaching the daemon -----------------------------------------------------


def test_no_daemon_at_the_socket_says_how_to_fix_it():
    with short_dir() as directory:
        path = os.path.join(directory, "missing.sock")
        with pytest.raises(ClientError) as caught:
            Client(f"unix://{path}").call("GET", "/_ping")
    assert caught.value.status == 0
    assert caught.value.message == (
        f"Cannot connect to the corral daemon at unix://{path} "
        "(No such file or directory). Is corrald running?"
    )


def test_a_path_with_spaces_is_refused_before_anything_is_sent():
    with pytest.raises(ClientError, match="printable ASCII without spaces"):
        Client("unix:///nonexistent.sock").open("GET", "/containers/a b/json")


def test_socket_path_takes_unix_urls_and_plain_paths_and_refuses_tcp(monkeypatch):
    monkeypatch.delenv("CORRAL_HOST", raising=False)
    assert socket_path("unix:///run/x.sock") == "/run/x.sock"
    assert socket_path("/run/y.sock") == "/run/y.sock"
    assert socket_path(None) == "/run/corral/corral.sock"
    monkeypatch.setenv("CORRAL_HOST", "unix:///env.sock")
    assert socket_path(None) == "/env.sock"
    with pytest.raises(ClientError, match="corral speaks to unix:///path sockets"):
        socket_path("tcp://127.0.0.1:2375")
