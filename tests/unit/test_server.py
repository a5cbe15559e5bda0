"""The HTTP layer over in-memory streams: h11 parsing, routing, streaming."""

import json

import trio
import trio.testing

from supervisor.server import Response, StreamResponse, _serve_connection, json_response


async def exchange(handler, raw: bytes) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_connection, server, handler)
        await client.send_all(raw)
        data = b""
        with trio.move_on_after(2):
            while chunk := await client.receive_some(65536):
                data += chunk
                if data.endswith(b"0\r\n\r\n") or b"Content-Length: 0" in data:
                    break
        await client.aclose()
    return data


async def echo(request):
    return json_response({"method": request.method, "path": request.path,
                          "query": request.query, "body": await request.json()})


async def test_a_request_is_parsed_and_answered_with_docker_headers():
    raw = (b"POST /v1.44/containers/create?name=web HTTP/1.1\r\nHost: x\r\n"
           b"Content-Length: 13\r\nConnection: close\r\n\r\n{\"Image\":\"b\"}")
    data = await exchange(echo, raw)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Api-Version: 1.44" in head
    doc = json.loads(body)
    assert doc == {"method": "POST", "path": "/v1.44/containers/create",
                   "query": {"name": "web"}, "body": {"Image": "b"}}


async def test_head_gets_headers_without_a_body():
    async def ping(request):
        return Response(200, b"OK", "text/plain")

    data = await exchange(ping, b"HEAD /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"\r\n\r\n")


async def test_streamed_responses_use_chunked_encoding():
    async def stream(request):
        async def chunks():
            yield b"one"
            yield b"two"
        return StreamResponse(chunks())

    data = await exchange(stream, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in data
    assert b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n" in data


async def test_garbage_closes_the_connection_without_raising():
    async def never(request):
        raise AssertionError("no request should be dispatched")

    data = await exchange(never, b"NOT HTTP AT ALL\r\n\r\n")
    assert not data.startswith(b"HTTP/1.1 2")
