"""Differential tests: keybroker's upstream client (http1) and the aiohttp-backed one behind
the same interface (upstream.UpstreamClient) must hand the proxy the same answer for the same
bytes from the upstream: framing, chunked, close-delimited, HEAD, 204/304, trailers, gzip."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from typing import Any

import pytest

from keybroker.proxy.aiohttp_client import AiohttpClient
from keybroker.proxy.http1 import PoolTimeout, UpstreamPool, UpstreamProtocolError
from keybroker.proxy.upstream import UpstreamClient
from tests.proxy.test_http1 import Scripted, answers, read_request

BODY = b'{"object": "list", "data": []}'
PACKED = gzip.compress(BODY)
CASES: dict[str, tuple[str, bytes, tuple[int, bytes, int | None]]] = {
    # name: (method, what the upstream sends, (status, body handed over, content_length))
    "length": (
        "GET",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        % len(BODY)
        + BODY,
        (200, BODY, len(BODY)),
    ),
    "chunked": (
        "GET",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\n" + BODY[:5] + b"\r\n%x\r\n" % (len(BODY) - 5) + BODY[5:] + b"\r\n0\r\n\r\n",
        (200, BODY, None),
    ),
    "close-delimited": (
        "GET",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n" + BODY,
        (200, BODY, None),
    ),
    "head": (
        "HEAD",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 30\r\n\r\n",
        (200, b"", 30),
    ),
    "204": ("DELETE", b"HTTP/1.1 204 No Content\r\n\r\n", (204, b"", None)),
    "304": (
        "GET",
        b"HTTP/1.1 304 Not Modified\r\ncontent-type: application/json\r\n\r\n",
        (304, b"", None),
    ),
    "trailers": (
        "GET",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n"
        b"trailer: x-checksum\r\n\r\n%x\r\n" % len(BODY) + BODY + b"\r\n0\r\nx-checksum: 1\r\n\r\n",
        (200, BODY, None),
    ),
    "gzip": (
        "GET",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"content-length: %d\r\n\r\n" % len(PACKED) + PACKED,
        (200, BODY, None),
    ),
    "gzip-chunked": (
        "GET",
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"transfer-encoding: chunked\r\n\r\n4\r\n"
        + PACKED[:4]
        + b"\r\n%x\r\n" % (len(PACKED) - 4)
        + PACKED[4:]
        + b"\r\n0\r\n\r\n",
        (200, BODY, None),
    ),
    "interim": (
        "POST",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}",
        (201, b"{}", 2),
    ),
}
Make = Callable[..., UpstreamClient]
CLIENTS: dict[str, Make] = {"http1": UpstreamPool, "aiohttp": AiohttpClient}


async def exchange(make: Make, method: str, raw: bytes) -> tuple[Any, ...]:
    async with Scripted(answers(raw)) as server:
        client = make(server.url, read_timeout=5)
        try:
            body = b"{}" if method == "POST" else None
            response = await client.request(method, b"/models", [], body)
            got = b"".join([chunk async for chunk in response.iter_chunks()])
            seen = (response.status, got, response.content_length)
            ctype = dict(response.raw_headers).get(b"content-type")
            response.release()
            return (*seen, ctype)
        finally:
            await client.aclose()


@pytest.mark.parametrize("case", list(CASES))
def test_both_clients_hand_over_the_same_answer(case: str) -> None:
    method, raw, expected = CASES[case]

    async def both() -> list[tuple[Any, ...]]:
        return [await exchange(make, method, raw) for make in CLIENTS.values()]

    ours, theirs = asyncio.run(both())
    assert ours[:3] == expected
    assert theirs == ours


@pytest.mark.parametrize("kind", list(CLIENTS))
@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + b"x-n: 1\r\n" * 200 + b"\r\n{}",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: " + b"b" * 70_000 + b"\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
    ],
    ids=["101", "200-fields", "70k-field", "two-lengths"],
)
def test_both_clients_refuse_what_the_proxy_cannot_relay(kind: str, raw: bytes) -> None:
    async def scenario() -> None:
        with pytest.raises(UpstreamProtocolError):
            await exchange(CLIENTS[kind], "GET", raw)

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", list(CLIENTS))
def test_both_clients_cap_their_connections(kind: str) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()

    async def scenario() -> None:
        async with Scripted(handler) as server:
            client = CLIENTS[kind](server.url, read_timeout=5, max_connections=2, pool_timeout=0.2)
            busy = [asyncio.ensure_future(client.request("GET", b"/a", [], None)) for _ in range(2)]
            await asyncio.sleep(0.1)
            with pytest.raises(PoolTimeout):
                await client.request("GET", b"/b", [], None)
            release.set()
            for response in await asyncio.gather(*busy):
                assert b"".join([c async for c in response.iter_chunks()]) == b"{}"
                response.release()
            await client.aclose()
            assert server.connections == 2

    asyncio.run(scenario())


def test_both_clients_send_the_same_request_line_and_headers() -> None:
    seen: list[list[bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        seen.append([head[0], *sorted(h for h in head[1:] if h.startswith(b"x-"))])
        seen[-1].append(body)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()

    async def scenario() -> None:
        for make in CLIENTS.values():
            async with Scripted(handler) as server:
                client = make(server.url, read_timeout=5)
                target = b"/files/file-1/content?purpose=a%20b&after=x%2Fy"
                headers = [(b"x-stainless-lang", b"python"), (b"x-a", b"1")]
                response = await client.request("POST", target, headers, b'{"a": 1}')
                assert b"".join([c async for c in response.iter_chunks()]) == b"{}"
                response.release()
                await client.aclose()

    asyncio.run(scenario())
    ours, theirs = seen
    assert ours[0] == b"POST /v1/files/file-1/content?purpose=a%20b&after=x%2Fy HTTP/1.1"
    assert theirs == ours
