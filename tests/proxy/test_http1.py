"""The upstream client against scripted HTTP/1.1 servers on loopback: framing, keep-alive,
streaming, timeouts and the failures a real upstream can produce."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keybroker.proxy.http1 import (
    HIGH_WATER,
    INFLATE_STEP,
    PoolTimeout,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
)

Run = Callable[[Awaitable[Any]], Any]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Each scenario on both loops: keybroker serves on uvloop, whose transports differ."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def go(main: Awaitable[Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)  # type: ignore[arg-type]

    return go


class Scripted:
    """A server that runs ``handler`` per connection and records what arrived."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Scripted:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.tls())
        return self

    def tls(self) -> ssl.SSLContext | None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"


async def read_request(reader: asyncio.StreamReader) -> tuple[list[bytes], bytes]:
    """One request's head lines and its body (Content-Length or chunked)."""
    head = (await reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in head[1:])
    if b"content-length" in fields:
        return head, await reader.readexactly(int(fields[b"content-length"]))
    body = b""
    if fields.get(b"transfer-encoding") == b"chunked":
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    return head, body


def answers(answer: bytes, *, forever: bool = False) -> Handler:
    """A handler that reads a request and writes ``answer``: once, or to every request."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
            if not forever:
                return

    return handler


async def body_of(response: UpstreamResponse) -> bytes:
    return b"".join([c async for c in response.iter_chunks()])


async def collect(
    response: UpstreamResponse, into: list[bytes], then: Callable[[], None] | None = None
) -> None:
    async for chunk in response.iter_chunks():
        into.append(chunk)
        if then is not None:
            then()


def test_requests_are_framed_and_a_connection_is_kept_alive(run: Run) -> None:
    seen: list[tuple[list[bytes], bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(OK)

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            for _ in range(3):
                response = await pool.request(
                    "POST", b"/chat/completions?x=1", [(b"authorization", b"Bearer k")], b"{}"
                )
                assert response.status == 200
                assert response.content_type == "application/json"
                assert response.content_length == 2
                assert await body_of(response) == b"{}"
                response.release()
            pool.close()
            assert server.connections == 1

    run(scenario())
    head, body = seen[0]
    assert head[0] == b"POST /v1/chat/completions?x=1 HTTP/1.1"
    assert head[1].startswith(b"host: 127.0.0.1:")
    assert set(head[2:]) == {
        b"authorization: Bearer k",
        b"accept-encoding: gzip",
        b"content-length: 2",
    }
    assert body == b"{}"


def test_a_streamed_answer_is_handed_over_chunk_by_chunk(run: Run) -> None:
    go_on = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        writer.write(b"b\r\ndata: one\n\n\r\n")
        await go_on.wait()  # the second chunk only once the first was read
        writer.write(b"b\r\ndata: two\n\n\r\n0\r\n\r\n")

    async def scenario() -> list[bytes]:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            response = await pool.request("POST", b"/chat/completions", [], b"{}")
            assert response.content_length is None
            got = []
            async for chunk in response.iter_chunks():
                got.append(chunk)
                go_on.set()
            assert response.at_eof
            response.release()
            pool.close()
            return got

    assert run(scenario()) == [b"data: one\n\n", b"data: two\n\n"]


def streams(*events: bytes, pause: float = 0.05, then_stall: float = 0.0) -> Handler:
    """A handler that answers with ``events``, one chunk each, ``pause`` apart."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        for event in events:
            await asyncio.sleep(pause)
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await asyncio.sleep(then_stall)
        writer.write(b"0\r\n\r\n")

    return handler


def test_chunks_go_to_the_sink_while_the_reader_waits_and_to_the_reader_otherwise(
    run: Run,
) -> None:
    events = [b"data: %d\n\n" % i for i in range(6)]

    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        async with Scripted(streams(*events)) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            response = await pool.request("POST", b"/chat/completions", [], b"{}")
            order: list[bytes] = []
            sunk: list[bytes] = []

            def sink(chunk: bytes) -> bool:
                if chunk == events[3]:
                    return False  # "the client is not taking more": the reader gets it
                sunk.append(chunk)
                order.append(chunk)
                return True

            response.relay_to(sink)
            read = []
            async for chunk in response.iter_chunks():
                read.append(chunk)
                order.append(chunk)
            assert response.at_eof
            response.release()
            pool.close()
            return order, sunk, read

    order, sunk, read = run(scenario())
    assert order == events  # nothing lost, nothing overtaken
    assert events[3] in read
    assert events[3] not in sunk
    assert set(sunk) == set(events) - set(read)
    assert len(sunk) >= 4  # each chunk after the head arrives alone while the reader waits


def in_one_read(*chunks: bytes) -> Handler:
    """A handler that sends the head, then all ``chunks`` in one write a moment later."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        await asyncio.sleep(0.05)
        writer.write(b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n")

    return handler


def test_a_chunk_is_never_sunk_past_one_the_reader_holds(run: Run) -> None:
    # Both chunks in one read; the sink leaves the first to the reader, which has not run yet
    # when the second arrives: the second must queue behind it, not leave first.
    async def scenario() -> list[bytes]:
        async with Scripted(in_one_read(b"one", b"two")) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            response = await pool.request("POST", b"/chat/completions", [], b"{}")
            order: list[bytes] = []

            def sink(chunk: bytes) -> bool:
                if chunk == b"one":
                    return False
                order.append(chunk)
                return True

            response.relay_to(sink)
            async for chunk in response.iter_chunks():
                order.append(chunk)
            response.release()
            pool.close()
            return order

    assert run(scenario()) == [b"one", b"two"]


def test_a_sink_that_fails_fails_the_reader_and_takes_nothing_more(run: Run) -> None:
    events = [b"data: %d\n\n" % i for i in range(4)]

    async def scenario() -> list[bytes]:
        async with Scripted(in_one_read(*events)) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            response = await pool.request("POST", b"/chat/completions", [], b"{}")
            got: list[bytes] = []

            def sink(chunk: bytes) -> bool:
                if chunk == events[1]:
                    raise RuntimeError("the client's side broke")
                got.append(chunk)
                return True

            response.relay_to(sink)
            with pytest.raises(RuntimeError, match="client's side broke"):
                await collect(response, got)
            response.close()
            pool.close()
            return got

    # The chunks after the failed one came in the same read: none is handed on.
    assert run(scenario()) == [events[0]]


def test_the_read_timeout_counts_from_the_last_chunk_the_sink_took(run: Run) -> None:
    # Chunks 0.1 s apart for 0.6 s, with a 0.25 s read timeout: the reader never wakes, yet
    # the stream is alive; then 0.5 s of silence must still time out.
    events = [b"data: %d\n\n" % i for i in range(6)]

    async def scenario() -> list[bytes]:
        async with Scripted(streams(*events, pause=0.1, then_stall=5)) as server:
            pool = UpstreamPool(server.url, read_timeout=0.25)
            response = await pool.request("POST", b"/chat/completions", [], b"{}")
            got: list[bytes] = []

            def sink(chunk: bytes) -> bool:
                got.append(chunk)
                return True

            response.relay_to(sink)
            started = asyncio.get_running_loop().time()
            with pytest.raises(TimeoutError):
                await collect(response, got)
            assert asyncio.get_running_loop().time() - started > 0.6
            response.close()
            pool.close()
            return got

    assert run(scenario()) == events


def test_a_streamed_upload_goes_chunked(run: Run) -> None:
    seen: list[tuple[list[bytes], bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"defg"):
            yield part

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            response = await pool.request("POST", b"/files", [], parts())
            assert response.status == 200
            response.release()
            pool.close()

    run(scenario())
    head, body = seen[0]
    assert b"transfer-encoding: chunked" in head
    assert body == b"abcdefg"


def test_a_gzip_answer_is_decoded(run: Run) -> None:
    packed = gzip.compress(b'{"usage": {}}' * 1000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n")
        writer.write(b"content-length: %d\r\n\r\n" % len(packed) + packed)

    async def scenario() -> bytes:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            response = await pool.request("GET", b"/models", [], None)
            assert response.content_length is None  # the decoded length is not the sent one
            body = await body_of(response)
            response.release()
            pool.close()
            return body

    assert run(scenario()) == b'{"usage": {}}' * 1000


def test_an_unasked_content_coding_is_refused(run: Run) -> None:
    handler = answers(b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\ncontent-length: 1\r\n\r\nx")

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            with pytest.raises(UpstreamProtocolError, match="br"):
                await pool.request("GET", b"/models", [], None)
            pool.close()

    run(scenario())


def test_an_answer_without_length_ends_with_the_connection(run: Run) -> None:
    handler = answers(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            for _ in range(2):
                response = await pool.request("GET", b"/models", [], None)
                assert await body_of(response) == b"all of it"
                response.release()
            pool.close()
            assert server.connections == 2  # not reused

    run(scenario())


def test_interim_answers_are_skipped(run: Run) -> None:
    handler = answers(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK)

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            response = await pool.request("GET", b"/models", [], None)
            assert response.status == 200
            assert (b"link", b"</a>") not in response.raw_headers
            assert await body_of(response) == b"{}"
            pool.close()

    run(scenario())


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("POST", False)])
def test_a_dropped_kept_alive_connection_is_retried_only_when_idempotent(
    run: Run, method: str, retried: bool
) -> None:
    requests = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while True:
            await read_request(reader)
            requests += 1
            if requests == 2:
                return  # the server gave up on the kept-alive connection: no answer
            writer.write(OK)

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            first = await pool.request(method, b"/models", [], b"{}")
            assert await body_of(first) == b"{}"
            first.release()
            if retried:
                second = await pool.request(method, b"/models", [], b"{}")
                assert second.status == 200
            else:
                # RFC 9110 §9.2.2: a POST may have been acted on; it is not sent twice.
                with pytest.raises(ConnectionResetError):
                    await pool.request(method, b"/models", [], b"{}")
            pool.close()
            assert requests == (3 if retried else 2)

    run(scenario())


def test_a_connection_found_closed_before_sending_is_replaced_even_for_post(run: Run) -> None:
    handler = answers(OK, forever=True)

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            first = await pool.request("POST", b"/chat/completions", [], b"{}")
            assert await body_of(first) == b"{}"
            first.release()
            # The kept-alive socket closes before the loop has told the pool: nothing of the
            # next request can have left, so it goes out on a new connection.
            idle = pool._idle[0]
            assert idle.transport is not None
            idle.transport.abort()
            second = await pool.request("POST", b"/chat/completions", [], b"{}")
            assert second.status == 200
            pool.close()
            assert server.connections == 2

    run(scenario())


def test_silence_before_or_within_an_answer_times_out(run: Run) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf ")
        await asyncio.sleep(5)

    async def scenario() -> None:
        async with Scripted(silent) as server:
            pool = UpstreamPool(server.url, read_timeout=0.2)
            with pytest.raises(TimeoutError):
                await pool.request("GET", b"/models", [], None)
            pool.close()
        async with Scripted(stalls) as server:
            pool = UpstreamPool(server.url, read_timeout=0.2)
            response = await pool.request("GET", b"/models", [], None)
            got: list[bytes] = []
            with pytest.raises(TimeoutError):
                await collect(response, got)
            assert got == [b"half "]
            response.close()
            pool.close()

    run(scenario())


def test_an_answer_cut_short_is_an_error_not_an_end(run: Run) -> None:
    handler = answers(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf ")

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            response = await pool.request("GET", b"/models", [], None)
            with pytest.raises(ConnectionResetError):
                async for _ in response.iter_chunks():
                    pass
            assert not response.at_eof
            pool.close()

    run(scenario())


def test_a_malformed_answer_is_a_protocol_error(run: Run) -> None:
    handler = answers(b"NONSENSE\r\n\r\n")

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            with pytest.raises(UpstreamProtocolError):
                await pool.request("GET", b"/models", [], None)
            pool.close()

    run(scenario())


async def get_models_twice(server: Scripted, *, pause: float) -> None:
    """Two GET /models through one pool, ``pause`` seconds apart, each answered ``{}``."""
    pool = UpstreamPool(server.url, read_timeout=5)
    for attempt in range(2):
        if attempt:
            await asyncio.sleep(pause)
        response = await pool.request("GET", b"/models", [], None)
        assert await body_of(response) == b"{}"
        response.release()
    pool.close()


def test_a_connection_with_an_unasked_answer_is_not_reused(run: Run) -> None:
    # A second, unasked answer straight after the one asked for.
    handler = answers(OK + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", forever=True)

    async def scenario() -> None:
        async with Scripted(handler) as server:
            # The answer asked for is whole; the stream after it is out of step.
            await get_models_twice(server, pause=0)
            assert server.connections == 2

    run(scenario())


def test_an_idle_connection_that_speaks_is_dropped(run: Run) -> None:
    # Bytes arriving on a pooled connection nobody asked anything of: the next request must not
    # read them as its answer, nor share the connection with whatever sent them.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nspoof")
        await answers(OK, forever=True)(reader, writer)

    async def scenario() -> None:
        async with Scripted(handler) as server:
            await get_models_twice(server, pause=0.3)
            assert server.connections == 2

    run(scenario())


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        (b"/models HTTP/1.1\r\nx-evil: 1\r\n\r\nGET /x", []),
        (b"/models", [(b"openai-beta", b"a\r\nx-evil: 1")]),
        (b"/models", [(b"openai-beta", b"a\nb")]),
    ],
)
def test_nothing_that_would_split_a_request_is_sent(
    run: Run, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise AssertionError("nothing should have been sent")

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            with pytest.raises(ValueError):
                await pool.request("GET", target, headers, None)
            pool.close()
            assert server.connections == 0

    run(scenario())


def test_a_slow_reader_pauses_the_socket_instead_of_buffering_everything(run: Run) -> None:
    size = 16 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            response = await pool.request("GET", b"/files/f/content", [], None)
            await asyncio.sleep(0.5)  # the app is slow: the upstream keeps sending meanwhile
            assert response.buffered < HIGH_WATER + 1024 * 1024
            total = sum([len(c) async for c in response.iter_chunks()])
            assert total == size
            response.release()
            pool.close()

    run(scenario())


def test_closing_an_answer_drops_the_upstream_connection(run: Run) -> None:
    ended = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        try:
            await reader.read()  # returns at EOF: the proxy hung up
        finally:
            ended.set()

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            response = await pool.request("POST", b"/chat/completions", [], b"{}")
            got: list[bytes] = []
            with pytest.raises(ConnectionResetError):  # the relay loop ends as interrupted
                # What the disconnect watcher does when the app goes away.
                await collect(response, got, then=response.close)
            assert got == [b"a"]
            await asyncio.wait_for(ended.wait(), 2)
            pool.close()

    run(scenario())


class TlsScripted(Scripted):
    def __init__(self, handler: Handler, cert: Path, key: Path) -> None:
        super().__init__(handler)
        self.cert, self.key = cert, key

    def tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    @property
    def url(self) -> str:
        return super().url.replace("http://127.0.0.1", "https://localhost")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_verifies_the_certificate_and_sends_sni(run: Run, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    hosts: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        hosts.append(head[1])
        writer.write(OK)
        await writer.drain()

    async def scenario() -> None:
        async with TlsScripted(handler, cert, key) as server:
            trusting = ssl.create_default_context(cafile=str(cert))
            pool = UpstreamPool(server.url, read_timeout=5, ssl_context=trusting)
            response = await pool.request("GET", b"/models", [], None)
            assert response.status == 200
            pool.close()
            # The machine's trust store does not know this certificate: no answer is read.
            strict = UpstreamPool(server.url, read_timeout=5)
            with pytest.raises(ssl.SSLCertVerificationError):
                await strict.request("GET", b"/models", [], None)
            strict.close()

    run(scenario())
    assert hosts[0].startswith(b"host: localhost:")


def test_an_idle_connection_with_unread_bytes_is_not_reused(run: Run) -> None:
    # The forged answer arrives while the loop is busy, so data_received has not seen it when
    # the next request takes the connection: the socket itself is asked before reuse. The
    # server is a thread, so that it writes while this loop is blocked.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        while len(accepted) < 2:
            conn, _ = listener.accept()
            accepted.append(conn)
            with contextlib.suppress(OSError):
                while conn.recv(65536).endswith(b"\r\n\r\n"):
                    conn.sendall(OK)
                    if len(accepted) == 1:
                        time.sleep(0.05)
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nspoof")
                        break

    server = threading.Thread(target=serve)
    server.start()

    async def scenario() -> None:
        pool = UpstreamPool(f"http://127.0.0.1:{port}/v1", read_timeout=5)
        response = await pool.request("GET", b"/models", [], None)
        assert await body_of(response) == b"{}"
        response.release()
        time.sleep(0.3)  # blocks the loop: the spoof lands unread
        response = await pool.request("GET", b"/models", [], None)
        assert await body_of(response) == b"{}"
        response.release()
        pool.close()

    try:
        run(scenario())
        assert len(accepted) == 2  # a fresh connection for the second request
    finally:
        server.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_the_pool_holds_at_most_its_cap_and_hands_connections_to_waiters(run: Run) -> None:
    open_now = most = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while True:
                await read_request(reader)
                await asyncio.sleep(0.02)
                writer.write(OK)
                await writer.drain()
        finally:
            open_now -= 1

    async def one(pool: UpstreamPool) -> bytes:
        response = await pool.request("GET", b"/models", [], None)
        body = await body_of(response)
        response.release()
        return body

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5, max_connections=3, pool_timeout=5)
            bodies = await asyncio.gather(*(one(pool) for _ in range(60)))
            assert bodies == [b"{}"] * 60
            assert server.connections == 3
            assert most <= 3
            assert pool.open_connections <= 3
            pool.close()

    run(scenario())


def test_a_request_over_the_cap_waits_for_the_pool_timeout_then_fails(run: Run) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(1)
        writer.write(OK)
        await writer.drain()

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5, max_connections=2, pool_timeout=0.2)
            busy = [asyncio.ensure_future(pool.request("GET", b"/a", [], None)) for _ in range(2)]
            await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                await pool.request("GET", b"/models", [], None)
            assert time.monotonic() - started >= 0.2
            assert pool.open_connections == 2
            for response in await asyncio.gather(*busy):
                assert await body_of(response) == b"{}"
                response.release()
            # Free again: the next request gets a connection at once.
            response = await pool.request("GET", b"/models", [], None)
            assert response.status == 200
            response.close()
            pool.close()

    run(scenario())


def test_an_upstream_that_stops_reading_the_request_hits_the_write_timeout(run: Run) -> None:
    stop = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stop.wait()  # never reads

    async def scenario() -> None:
        async with Scripted(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=5, write_timeout=0.3)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await pool.request("POST", b"/files", [], b"x" * (64 * 1024 * 1024))
            assert time.monotonic() - started < 3
            stop.set()
            pool.close()

    run(scenario())


def head_of(size: int) -> bytes:
    """An answer head of exactly ``size`` bytes, ending with its blank line."""
    start = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pad: "
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "accepted"),
    [
        (head_of(64 * 1024) + b"{}", True),  # at the limit, its body in the same read
        (head_of(64 * 1024 + 1) + b"{}", False),
        (
            b"HTTP/1.1 100 Continue\r\nx-pad: "
            + b"p" * 60000
            + b"\r\n\r\n"
            + head_of(60000)
            + b"{}",
            True,  # each head on its own
        ),
        (OK.replace(b"\r\n\r\n", b"\r\n" + b"x-n: 1\r\n" * 98 + b"\r\n"), True),  # 100 fields
        (OK.replace(b"\r\n\r\n", b"\r\n" + b"x-n: 1\r\n" * 99 + b"\r\n"), False),
        (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\nxx", False),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nx-t: "
            + b"t" * 2_000_000
            + b"\r\n\r\n",
            False,  # trailers are bounded too (within one read of slack)
        ),
    ],
    ids=["64k-head", "64k+1-head", "interim", "100-fields", "101-fields", "101", "trailers"],
)
def test_heads_are_bounded_and_upgrades_refused(run: Run, answer: bytes, accepted: bool) -> None:
    async def scenario() -> None:
        async with Scripted(answers(answer)) as server:
            pool = UpstreamPool(server.url, read_timeout=5)
            if accepted:
                response = await pool.request("GET", b"/models", [], None)
                assert await body_of(response) == b"{}"
                response.release()
            else:
                with pytest.raises(UpstreamProtocolError):
                    await body_of(await pool.request("GET", b"/models", [], None))
            pool.close()

    run(scenario())


def test_a_gzip_bomb_is_inflated_a_step_at_a_time_and_bounded(run: Run) -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), 9)

    def coded(kind: bytes) -> Handler:
        return answers(
            b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\ncontent-encoding: gzip\r\n"
            b"content-length: %d\r\n\r\n" % len(bomb) + bomb
        )

    async def scenario() -> None:
        async with Scripted(coded(b"application/json")) as server:
            pool = UpstreamPool(server.url, read_timeout=5, gzip_limit=16 * 1024 * 1024)
            response = await pool.request("GET", b"/models", [], None)
            await asyncio.sleep(0.2)  # all of it has arrived; little has been inflated
            assert response.buffered <= HIGH_WATER + INFLATE_STEP
            with pytest.raises(UpstreamProtocolError, match="inflates too far"):
                await body_of(response)
            pool.close()
        # A stream is not held whole: it passes under flow control, whatever it inflates to.
        async with Scripted(coded(b"text/event-stream")) as server:
            pool = UpstreamPool(server.url, read_timeout=5, gzip_limit=16 * 1024 * 1024)
            response = await pool.request("GET", b"/models", [], None)
            total = 0
            async for chunk in response.iter_chunks():
                assert response.buffered <= HIGH_WATER + INFLATE_STEP
                total += len(chunk)
            assert total == 64 * 1024 * 1024
            response.release()
            pool.close()

    run(scenario())
