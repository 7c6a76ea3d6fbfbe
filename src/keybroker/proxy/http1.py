"""A lean HTTP/1.1 client for the one upstream: keep-alive pool, streamed answers, timeouts.

The proxy talks to one origin with a handful of request shapes, so it does not need a general
client: aiohttp's ClientSession was the largest single cost on the hot path and in the time to
the first streamed chunk (docs/benchmarks.md). Parsing is httptools (llhttp, the parser uvicorn
serves with); this module only frames requests and hands answers over as they arrive.
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

from keybroker.head_limits import MAX_FIELDS, MAX_HEAD_BYTES

# RFC 9110 §9.2.2: only these may be sent again after a reused connection failed before any
# answer (RFC 9112 §9.3.1.1); a POST might already have been acted on.
IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "PUT", "TRACE"})
MAX_IDLE = 256
# Stop reading from the socket while this much of an answer waits for a slow app.
HIGH_WATER = 256 * 1024
# A gzip answer is inflated this much at a time, and no further while HIGH_WATER bytes wait: a
# small body can inflate a thousandfold (a "gzip bomb"), so it is never inflated in one call.
INFLATE_STEP = 64 * 1024
# A request line with whitespace or control bytes would split the request (RFC 9112 §3).
UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")


def checked_request(path: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """``path``, once neither it nor a header could split the request; else ValueError."""
    if UNSAFE_TARGET.search(path):
        raise ValueError("request target has whitespace or control bytes")
    for name, value in headers:
        # CR, LF or NUL in a header value would split the request (RFC 9110 §5.5); uvicorn
        # refuses them from clients already, this keeps it so for every header we send.
        if b"\r" in value or b"\n" in value or b"\0" in value:
            raise ValueError(f"header {name!r} has a line break")
    return path


class UpstreamProtocolError(ConnectionError):
    """The upstream's bytes are not an HTTP/1.1 answer we can relay."""


class PoolTimeout(Exception):
    """Every connection the pool may open is busy, and none came free within the pool timeout."""


class _Unsent(ConnectionResetError):
    """The connection was gone before any byte of the request left: safe to send again."""


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the reason is kept on the connection."""


class _Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.used = False
        self.sent = False
        self.fileno = -1
        self._response: UpstreamResponse | None = None
        self._writable: asyncio.Future[None] | None = None
        # Bytes of the head being read, then bytes since the last body byte (chunk framing,
        # trailers): both bounded by MAX_HEAD_BYTES. Fields (headers and trailers) counted too.
        self._framing = 0
        self._fields = 0
        self._body_bytes = 0
        self._refusal = ""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        self.fileno = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None:
            self.abort()  # nothing was asked: an idle connection must stay silent
            return
        if response.headers_done:
            before = self._body_bytes
            self._feed(response, data)
            # Bytes since the last body byte, at most: chunk framing and trailers.
            body = self._body_bytes - before
            self._framing = len(data) - body if body else self._framing + len(data)
            if self._framing > MAX_HEAD_BYTES and not self.closed:
                self._refuse(response, "chunk framing or trailers over 64 KiB")
            return
        room = MAX_HEAD_BYTES - self._framing
        if len(data) <= room:
            self._framing += len(data)
            self._feed(response, data)
            return
        # The head may still end within its last allowed bytes, and what follows be its body:
        # feed only those first, and the rest only if the head did end there.
        self._framing = MAX_HEAD_BYTES
        self._feed(response, data[:room])
        if self.closed:
            return
        if response.headers_done or self._framing < MAX_HEAD_BYTES:  # or an interim answer ended
            self.data_received(data[room:])
        else:
            self._refuse(response, "answer head over 64 KiB")

    def _feed(self, response: UpstreamResponse, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # RFC 9110 §15.2.2: 101 switches the connection to another protocol, which the
            # proxy never asked for and cannot relay.
            self._refuse(response, "the upstream switched protocols (an upgrade)")
        except httptools.HttpParserError as exc:
            if self._refusal:
                self._refuse(response, self._refusal)
            else:
                response.fail(UpstreamProtocolError(f"malformed answer from the upstream: {exc}"))
                self.abort()

    def _refuse(self, response: UpstreamResponse, reason: str) -> None:
        response.fail(UpstreamProtocolError(f"refused an answer from the upstream: {reason}"))
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
        if response is not None and not response.complete and not response.ended:
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
        response = self._response
        assert response is not None
        self._fields += 1
        if self._fields > MAX_FIELDS:
            self._refusal = f"more than {MAX_FIELDS} header fields"
            raise _Refused
        if not response.headers_done:  # trailers are dropped (RFC 9110 §6.5.1 allows it)
            response.raw_headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self.parser.get_status_code()
        if status == 101:
            self._refusal = "the upstream switched protocols (101)"
            raise _Refused
        if 100 <= status < 200:
            # An interim answer (RFC 9110 §15.2); the real one follows, with a head of its own.
            response.raw_headers.clear()
            self._framing = self._fields = 0
            return
        response.headers_arrived(status, self.parser.should_keep_alive())
        self._framing = 0

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        self._body_bytes += len(body)
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
        self._framing = self._fields = 0

    def quiet(self) -> bool:
        """Whether nothing waits unread on the socket: bytes (or an end) an idle connection
        received in the loop's current turn, not yet seen by data_received, would otherwise be
        read as the answer to the next request, perhaps another grant's."""
        if self.fileno < 0:
            return True
        poll = select.poll()
        poll.register(self.fileno, select.POLLIN | select.POLLPRI)
        return not poll.poll(0)

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise (ConnectionResetError if self.sent else _Unsent)(
                "the upstream closed the connection"
            )
        self.sent = True
        self.transport.write(data)
        if self._writable is not None:
            # The upstream stopped taking the request: the write timeout bounds the wait.
            async with asyncio.timeout(self.pool.write_timeout):
                await self._writable

    def done(self, reusable: bool) -> None:
        self._response = None
        if reusable and not self.closed:
            self.pool.keep(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.closed = True
        self.pool.forget(self)  # its slot is free now, not only once the loop has closed it
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """One answer, read as it arrives. ``raw_headers`` names are lower-case bytes."""

    def __init__(
        self, conn: _Connection, method: str, read_timeout: float, gzip_limit: int
    ) -> None:
        self._conn = conn
        self._method = method
        self._read_timeout = read_timeout
        self._gzip_limit = gzip_limit
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._heard = 0.0  # loop time the reader began waiting or the sink last took a chunk
        self._error: BaseException | None = None
        self._decoder: zlib._Decompress | None = None
        self._compressed = b""  # received, not inflated yet (it waits for the reader)
        self._inflated = 0
        self.ended = False  # the upstream's body is whole; complete once all is inflated
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
        self.decoded = False  # the body arrived gzip-coded and is handed over decoded

    # fed by the connection
    def headers_arrived(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self.keep_alive = keep_alive
        length: int | None = None
        codings: list[bytes] = []
        for name, value in self.raw_headers:
            if name == b"content-type":
                self.content_type = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"transfer-encoding":
                codings += [c.strip() for c in value.lower().split(b",")]
            elif name == b"content-encoding":
                coding = value.strip().lower()
                if coding == b"gzip":
                    self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                elif coding not in (b"", b"identity"):
                    self.fail(UpstreamProtocolError(f"unasked content coding {coding!r}"))
                    return
        # Only chunked was asked for (RFC 9112 §7.4: no TE header was sent); any other
        # transfer coding would be relayed still coded, and framing after it is ambiguous.
        chunked = codings == [b"chunked"]
        if codings and not chunked:
            self.fail(UpstreamProtocolError(f"unasked transfer coding {b', '.join(codings)!r}"))
            return
        self.decoded = self._decoder is not None
        self.content_length = None if self.decoded else length
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
            self._compressed += data
            self._inflate()
        elif data:
            self._take(data)

    def _inflate(self) -> None:
        decoder = self._decoder
        assert decoder is not None
        while self._compressed and self._buffered <= HIGH_WATER and self._error is None:
            try:
                data = decoder.decompress(self._compressed, INFLATE_STEP)
            except zlib.error as exc:
                self.fail(UpstreamProtocolError(f"bad gzip body from the upstream: {exc}"))
                self._conn.abort()
                return
            self._compressed = decoder.unconsumed_tail
            self._inflated += len(data)
            if self._inflated > self._gzip_limit and not self.content_type.startswith(
                "text/event-stream"
            ):
                # A whole answer is held to be relayed in one piece (forward.py): this bounds
                # what it holds. A stream passes under flow control, which bounds it instead.
                self.fail(UpstreamProtocolError("the upstream's gzip answer inflates too far"))
                self._conn.abort()
                return
            if data:
                self._take(data)
        if self.ended and not self._compressed:
            self._end()

    def _take(self, data: bytes) -> None:
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
        self.ended = True
        if self._decoder is not None and self._compressed:
            return  # complete once the reader has let the rest be inflated (_inflate)
        self._end()

    def _end(self) -> None:
        if self.complete:
            return
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
                self._buffered += len(tail)
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
                if self._buffered <= HIGH_WATER // 4:
                    if self._compressed:
                        self._inflate()
                    if self._paused and self._conn.transport and self._buffered <= HIGH_WATER // 4:
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
    """Keep-alive connections to one origin, at most ``max_connections`` open at once; requests
    go out as HTTP/1.1. A request that finds every connection busy waits up to ``pool_timeout``
    for one, then fails with PoolTimeout."""

    def __init__(
        self,
        base_url: str,
        *,
        read_timeout: float,
        connect_timeout: float = 10.0,
        write_timeout: float | None = None,
        keepalive: float = 60.0,
        max_connections: int = 100,
        pool_timeout: float = 10.0,
        gzip_limit: int = 16 * 1024 * 1024,
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
        self.write_timeout = read_timeout if write_timeout is None else write_timeout
        self.keepalive = keepalive
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self.gzip_limit = gzip_limit
        self._ssl = (ssl_context or ssl.create_default_context()) if self.tls else None
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._opening = 0
        # Requests waiting for a connection, first come first served: each future gets a
        # connection handed over, or None when a slot came free to open one in.
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()

    @property
    def open_connections(self) -> int:
        """Connections open or being opened: never above ``max_connections``."""
        return len(self._all) + self._opening

    async def request(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamResponse:
        """Send one request for ``target`` (path and query under the base URL's path).

        Returns once the answer's headers are in. Raises PoolTimeout, TimeoutError,
        ConnectionError (UpstreamProtocolError for an answer refused) or OSError.
        """
        head = self._head(method, target, headers, body)
        idempotent = method in IDEMPOTENT and not isinstance(body, AsyncIterator)
        retry = True
        while True:
            conn = await self._acquire()
            reused = conn.used
            response = UpstreamResponse(conn, method, self.read_timeout, self.gzip_limit)
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
        path = checked_request(self.prefix + target, headers)
        lines = [f"{method} ".encode() + path + b" HTTP/1.1", b"host: " + self.host_header]
        for name, value in headers:
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
            if not conn.closed and now - conn.idle_since < self.keepalive and conn.quiet():
                return conn
            conn.abort()
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while self.open_connections >= self.max_connections:
            deadline = deadline or loop.time() + self.pool_timeout
            handed = await self._wait_for_slot(deadline)
            if handed is not None:
                return handed
        self._opening += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self.tls else None,
                )
        finally:
            self._opening -= 1
        if protocol.closed:  # lost already (connection_lost ran before we were resumed)
            self._free_slot()
            raise ConnectionResetError("the upstream closed the connection")
        self._all.add(protocol)
        return protocol

    async def _wait_for_slot(self, deadline: float) -> _Connection | None:
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                # Handed a connection (or a slot) just as the wait ended: pass it on.
                handed = waiter.result()
                if handed is not None:
                    self.keep(handed)
                else:
                    self._free_slot()
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"all {self.max_connections} upstream connections stayed busy "
                    f"for {self.pool_timeout:g} s"
                ) from None
            raise

    def _free_slot(self) -> None:
        """A connection is gone: a waiting request may open one in its place."""
        while self._waiters and self.open_connections < self.max_connections:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def keep(self, conn: _Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # straight to the request waiting longest
                return
        if len(self._idle) >= MAX_IDLE:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            self._free_slot()
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()

    async def aclose(self) -> None:
        self.close()
