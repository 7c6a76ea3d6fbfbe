"""A lean HTTP/1.1 client for the one upstream: keep-alive pool, streamed answers, timeouts.

The proxy talks to one origin with a handful of request shapes, so it does not need a general
client: aiohttp's ClientSession was the largest single cost on the hot path and in the time to
the first streamed chunk (docs/benchmarks.md). Parsing is httptools (llhttp, the parser uvicorn
serves with); this module only frames requests and hands answers over as they arrive.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

# RFC 9110 §9.2.2: only these may be sent again after a reused connection failed before any
# answer (RFC 9112 §9.3.1.1); a POST might already have been acted on.
IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "PUT", "TRACE"})
MAX_IDLE = 256
# Stop reading from the socket while this much of an answer waits for a slow app.
HIGH_WATER = 256 * 1024
# A request line with whitespace or control bytes would split the request (RFC 9112 §3).
UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")


class UpstreamProtocolError(ConnectionError):
    """The upstream's bytes are not an HTTP/1.1 answer we can relay."""


class _Unsent(ConnectionResetError):
    """The connection was gone before any byte of the request left: safe to send again."""


class _Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.used = False
        self.sent = False
        self._response: UpstreamResponse | None = None
        self._writable: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None:
            self.abort()  # nothing was asked: an idle connection must stay silent
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response.fail(UpstreamProtocolError(f"malformed answer from the upstream: {exc}"))
            self.abort()

    def eof_received(self) -> bool | None:
        response = self._response
        if response is not None and response.until_close and response.headers_done:
            response.finish()  # RFC 9112 §6.3 rule 8: the body ends when the connection does
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        response = self._response
        if response is not None and not response.complete:
            if exc is None and response.until_close and response.headers_done:
                response.finish()
            else:
                response.fail(ConnectionResetError("the upstream closed the connection"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("the upstream closed the connection"))

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        response = self._response
        if response is not None and response.headers_done:
            # A second answer to one request: the stream is out of step, never reuse it.
            response.fail(UpstreamProtocolError("unexpected extra answer from the upstream"))
            self.abort()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        self._response.raw_headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            response.raw_headers.clear()  # an interim answer (RFC 9110 §15.2); the real one follows
            return
        response.headers_arrived(status, self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        self._response.feed(body)

    def on_message_complete(self) -> None:
        response = self._response
        if response is not None and response.headers_done:
            response.finish()

    # used by the pool
    def begin(self, response: UpstreamResponse) -> None:
        self.used = True
        self.sent = False
        self._response = response

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise (ConnectionResetError if self.sent else _Unsent)(
                "the upstream closed the connection"
            )
        self.sent = True
        self.transport.write(data)
        if self._writable is not None:
            await self._writable

    def done(self, reusable: bool) -> None:
        self._response = None
        if reusable and not self.closed:
            self.pool.keep(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """One answer, read as it arrives. ``raw_headers`` names are lower-case bytes."""

    def __init__(self, conn: _Connection, method: str, read_timeout: float) -> None:
        self._conn = conn
        self._method = method
        self._read_timeout = read_timeout
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._heard = 0.0  # loop time the reader began waiting or the sink last took a chunk
        self._error: BaseException | None = None
        self._decoder: zlib._Decompress | None = None
        # Takes a chunk at once, in data_received, while the reader waits with nothing queued;
        # returns False to leave it to the reader instead (see ``relay_to``).
        self._sink: Callable[[bytes], bool] | None = None
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.until_close = False
        self.content_type = ""
        self.content_length: int | None = None

    # fed by the connection
    def headers_arrived(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self.keep_alive = keep_alive
        length: int | None = None
        chunked = False
        for name, value in self.raw_headers:
            if name == b"content-type":
                self.content_type = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            elif name == b"content-encoding":
                coding = value.strip().lower()
                if coding == b"gzip":
                    self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                elif coding not in (b"", b"identity"):
                    self.fail(UpstreamProtocolError(f"unasked content coding {coding!r}"))
                    return
        self.content_length = None if self._decoder is not None else length
        bodyless = self._method == "HEAD" or status in (204, 304)
        self.until_close = not bodyless and length is None and not chunked
        self.headers_done = True
        if self._method == "HEAD":
            # llhttp cannot be told the request was HEAD; the connection is not reused.
            self.keep_alive = False
            self.finish()
        self._wake()

    def feed(self, data: bytes) -> None:
        if self.complete or self._error is not None:
            return
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                self.fail(UpstreamProtocolError(f"bad gzip body from the upstream: {exc}"))
                self._conn.abort()
                return
        if data:
            sink = self._sink
            waiter = self._waiter
            # Only while the reader waits with nothing queued: what it was given has all been
            # handled, so a chunk taken here cannot overtake one it holds.
            if sink is not None and waiter is not None and not waiter.done() and not self._chunks:
                try:
                    taken = sink(data)
                except Exception as exc:  # the reader raises it, as if its own send had failed
                    self.fail(exc)
                    return
                if taken:
                    self._heard = self._loop.time()
                    return
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > HIGH_WATER and not self._paused and self._conn.transport:
                self._paused = True
                self._conn.transport.pause_reading()
            self._wake()

    def finish(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self.complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        self._heard = self._loop.time()
        self._timer = self._loop.call_later(self._read_timeout, self._timed_out)
        try:
            await self._waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            self._waiter = None

    def _timed_out(self) -> None:
        if self._waiter is None or self._waiter.done():
            return
        # The read timeout counts from the last chunk: ones the sink took did not wake us.
        quiet = self._loop.time() - self._heard
        if quiet < self._read_timeout:
            self._timer = self._loop.call_later(self._read_timeout - quiet, self._timed_out)
            return
        self._waiter.set_exception(TimeoutError("the upstream stopped answering"))

    # read by the proxy
    async def wait_headers(self) -> None:
        while not self.headers_done and self._error is None:
            await self._wait()
        if self._error is not None:
            raise self._error

    def relay_to(self, sink: Callable[[bytes], bool] | None) -> None:
        """Hand chunks that arrive while the reader waits straight to ``sink`` (None: stop).

        A streamed chunk then leaves within the ``data_received`` that brought it, instead of
        waking the reader's task first (bench/NOTES.md, eighth session). The sink returns
        False to leave a chunk to the reader (the client cannot take more now); an exception
        it raises is raised to the reader. Completion, errors and timeouts reach the reader
        as before.
        """
        self._sink = sink

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= HIGH_WATER // 4 and self._conn.transport:
                    self._paused = False
                    self._conn.transport.resume_reading()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self.complete:
                return
            else:
                await self._wait()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read: bounded, since reading pauses above HIGH_WATER."""
        return self._buffered

    @property
    def at_eof(self) -> bool:
        return self.complete and not self._chunks

    def close(self) -> None:
        """Drop the connection: the upstream sees the request cancelled; readers stop."""
        self.fail(ConnectionResetError("the relay was cancelled"))
        self._conn.done(reusable=False)

    def release(self) -> None:
        """Give a fully read connection back to the pool; anything else is closed."""
        self._conn.done(reusable=self.at_eof and self.keep_alive and self._error is None)


class UpstreamPool:
    """Keep-alive connections to one origin; requests go out as HTTP/1.1."""

    def __init__(
        self,
        base_url: str,
        *,
        read_timeout: float,
        connect_timeout: float = 10.0,
        keepalive: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host[:port]/path, not {base_url!r}")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        netloc = self.host if ":" not in self.host else f"[{self.host}]"
        self.host_header = (netloc if default else f"{netloc}:{self.port}").encode("idna")
        self.prefix = parts.path.rstrip("/").encode()
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._ssl = (ssl_context or ssl.create_default_context()) if self.tls else None
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    async def request(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamResponse:
        """Send one request for ``target`` (path and query under the base URL's path).

        Returns once the answer's headers are in. Raises TimeoutError, ConnectionError
        (UpstreamProtocolError for a malformed answer) or OSError.
        """
        head = self._head(method, target, headers, body)
        idempotent = method in IDEMPOTENT and not isinstance(body, AsyncIterator)
        retry = True
        while True:
            conn = await self._acquire()
            reused = conn.used
            response = UpstreamResponse(conn, method, self.read_timeout)
            conn.begin(response)
            try:
                await self._send(conn, head, body)
                await response.wait_headers()
            except BaseException as exc:
                conn.done(reusable=False)
                # Once more on a fresh connection if nothing left, or if a kept-alive connection
                # dropped an idempotent request before any answer.
                if retry and (
                    isinstance(exc, _Unsent)
                    or (reused and idempotent and type(exc) is ConnectionResetError)
                ):
                    retry = False
                    continue
                raise
            return response

    def _head(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> bytes:
        path = self.prefix + target
        if UNSAFE_TARGET.search(path):
            raise ValueError("request target has whitespace or control bytes")
        lines = [f"{method} ".encode() + path + b" HTTP/1.1", b"host: " + self.host_header]
        for name, value in headers:
            # CR, LF or NUL in a header value would split the request (RFC 9110 §5.5); uvicorn
            # refuses them from clients already, this keeps it so for every header we send.
            if b"\r" in value or b"\n" in value or b"\0" in value:
                raise ValueError(f"header {name!r} has a line break")
            lines.append(name + b": " + value)
        lines.append(b"accept-encoding: gzip")
        if isinstance(body, bytes):
            lines.append(b"content-length: %d" % len(body))
        elif body is not None:
            lines.append(b"transfer-encoding: chunked")
        lines.append(b"\r\n")
        return b"\r\n".join(lines)

    async def _send(
        self, conn: _Connection, head: bytes, body: bytes | AsyncIterator[bytes] | None
    ) -> None:
        if body is None:
            await conn.write(head)
        elif isinstance(body, bytes):
            await conn.write(head + body)
        else:
            await conn.write(head)
            async for chunk in body:
                if chunk:
                    await conn.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            await conn.write(b"0\r\n\r\n")

    async def _acquire(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: its socket is warm
            if not conn.closed and now - conn.idle_since < self.keepalive:
                return conn
            conn.abort()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, protocol = await loop.create_connection(
                lambda: _Connection(self),
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self.tls else None,
            )
        self._all.add(protocol)
        return protocol

    def keep(self, conn: _Connection) -> None:
        if len(self._idle) >= MAX_IDLE:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
