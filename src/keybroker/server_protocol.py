"""uvicorn's HTTP protocol with a response's writes joined into one send.

uvicorn writes a response's head and its body with separate ``transport.write`` calls, so a
small answer costs two ``send`` syscalls and two loopback segments, and the client wakes up
twice. Under load those two writes were a fifth of the worker's CPU samples (py-spy, 32
connections, bench/NOTES.md). Here, writes made during one turn of the event loop are held and
sent together at the end of that turn: the head and body of an answer go out as one segment.
Once an answer's head has gone out, its later parts (a stream's chunks) are sent as they are
written: there is nothing left to join them with, and waiting for the end of the turn cost each
chunk a loop iteration (bench/NOTES.md, seventh session). A complete answer goes out at once,
not at the end of the turn: what the app does after answering (recording usage) is not the
client's wait.

It also offers the app the ASGI extension ``keybroker.send_now`` (below): a streamed chunk can
then be relayed from the upstream connection's ``data_received`` without waking the app's task.

Both lean on uvicorn internals (the ``cycle``, ``flow.write_paused``, ``response_complete``, a
``send`` that finishes in one step). ``choose()`` runs a self-test of each at start-up and falls
back, with one warning, to ``GuardedProtocol``: uvicorn's own protocol with only keybroker's
request limits (RFC 6585 §5 431 for a head over 64 KiB or 100 fields, a timeout for receiving a
head), which lean on nothing but the parser's callbacks. ``KEYBROKER_SERVER_PROTOCOL=stock``
forces that path.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from keybroker import send_now
from keybroker.head_limits import MAX_FIELDS, MAX_HEAD_BYTES
from keybroker.proxy.errors import error_body

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

logger = logging.getLogger("keybroker")
# After refusing a request, what the client still sends is read and dropped for this long
# before closing, so that the refusal is not lost to a reset (RFC 9112 §9.6).
LINGER_SECONDS = 2.0


class JoinedWrites:
    """A transport that holds an answer's first writes until the end of the loop's turn, then
    sends them as one; the rest of that answer is sent as it is written.

    Closing or handing over the connection sends what is held first, so nothing written is
    lost or reordered; after an abort, or once the client has gone, what is held is dropped,
    as the transport itself would drop it.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._passing = False  # an answer's head has gone out: its later parts go at once

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._passing:
            self._send(data)
            return
        if not self._held:
            self._loop.call_soon(self._end_of_turn)
        self._held.append(bytes(data))

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if not self._held:
            return
        data = b"".join(self._held)
        self._held.clear()
        self._send(data)

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def _end_of_turn(self) -> None:
        # A complete answer was sent by answer_complete, so what is held here has begun an
        # answer still under way (or is a 100 Continue, after which nothing is joined). Only
        # answer_complete ends passing: a second end of turn in one turn (an answer completed
        # and the next begun) finds nothing held and must not undo the first.
        if self._held:
            self._passing = True
            self.flush()

    def answer_complete(self) -> None:
        """Send what the answer left held; the next answer's writes are joined again."""
        self.flush()
        self._passing = False

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        # abort, get_extra_info, is_closing, pause_reading, ...: the transport's own.
        return getattr(self._transport, name)


class SendNow:  # the send_now.SendNow protocol
    """Send a part of a started answer's body at once, outside the app's task.

    ``ready()`` says whether that can be done without waiting: the answer has begun and is not
    complete, the client is still there and is taking what it is sent (uvicorn's flow control
    has not paused writing). When it is not, the app must ``await send(...)`` as usual.
    ``serves(send)`` says whether ``send`` is the server's own: an app whose ``send`` is
    wrapped (middleware) must not use this, or it would go around the wrapper.
    """

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        # Weak: the cycle holds the scope that holds this, and a reference cycle per request
        # would leave every request's objects to the garbage collector, whose pauses then
        # stretched the one-connection p99 from 1 ms to 5-20 ms (bench/NOTES.md).
        self._cycle = weakref.ref(cycle)

    def serves(self, send: object) -> bool:
        cycle = self._cycle()
        return cycle is not None and send == cycle.send

    def ready(self) -> bool:
        cycle = self._cycle()
        return (
            cycle is not None
            and cycle.response_started
            and not cycle.response_complete
            and not cycle.disconnected
            and not cycle.flow.write_paused
        )

    def __call__(self, body: bytes) -> None:
        cycle = self._cycle()
        if cycle is None:
            raise RuntimeError("the answer this was for is gone")
        # uvicorn's send waits only for flow control (write_paused), which ready() ruled out,
        # so its coroutine runs to the end in one step: one piece of code frames the body.
        step = cycle.send({"type": "http.response.body", "body": body, "more_body": True})
        try:
            step.send(None)
        except StopIteration:
            return
        step.close()
        raise RuntimeError("uvicorn's send waited although the answer was ready for more")


def _refusal(status: bytes, message: str, code: str) -> bytes:
    body = error_body(message, "invalid_request_error", code)
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
    )


TOO_LARGE = _refusal(
    b"431 Request Header Fields Too Large",
    f"The request's headers are over {MAX_HEAD_BYTES // 1024} KiB or {MAX_FIELDS} fields.",
    "request_header_fields_too_large",
)
TIMED_OUT = _refusal(
    b"408 Request Timeout", "The request's headers did not arrive in time.", "request_timeout"
)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's protocol with bounds on what a request head may hold and how long it may take
    to arrive. llhttp keeps a header that has not ended in memory however long it grows: 200 MB
    of headers cost uvicorn's worker 225 MB of RSS before any check ran.
    """

    header_timeout = 10.0  # set by configure() from KEYBROKER_HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0  # of the head being received
        self._fields = 0
        self._in_body = False  # from a head's end to its message's end
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that sends nothing is a slowloris too

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the lingering close
        if self._in_body:
            super().data_received(data)
            return
        if self._head_timer is None:
            self._arm_head_timer()
        room = MAX_HEAD_BYTES - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # The head may still end within its last allowed bytes, and a body follow: feed only
        # those first, and the rest only if the head did end there (on_headers_complete).
        self._head_bytes = MAX_HEAD_BYTES
        super().data_received(data[:room])
        if self._refused or self.transport.is_closing():
            return
        if self._head_bytes < MAX_HEAD_BYTES:
            self.data_received(data[room:])
        else:
            self._refuse(TOO_LARGE)

    def on_message_begin(self) -> None:
        self._fields = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_FIELDS:
            self._refuse(TOO_LARGE)
            raise ValueError("too many header fields")  # stops the parser (a parser error)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_bytes = 0
        self._in_body = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # uvicorn answers a parser error; a refusal has answered already
            super().send_400_response(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_body and not self._refused:
            if self._head_bytes:
                self._refuse(TIMED_OUT)
            else:
                self.transport.close()  # nothing begun: nothing to answer

    def _refuse(self, answer: bytes) -> None:
        """Answer and close; what the client still sends meanwhile is dropped."""
        self._refused = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()


class JoinedWritesProtocol(GuardedProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.joined = JoinedWrites(transport, self.loop)
        super().connection_made(self.joined)  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # The app's task starts on a later turn, so the scope is complete before it reads it.
        # (An upgrade returns early and makes no cycle for this scope.)
        if cycle is not None and cycle.scope is self.scope:
            extensions = self.scope.setdefault("extensions", {})
            extensions[send_now.NAME] = {"send": SendNow(cycle)}

    def on_response_complete(self) -> None:
        self.joined.answer_complete()
        super().on_response_complete()


def configure(header_timeout: float) -> None:
    """The settings the protocols read (each worker calls this from its app factory)."""
    GuardedProtocol.header_timeout = header_timeout


def choose(stock: bool) -> type[GuardedProtocol]:
    """The protocol ``keybroker serve`` runs: JoinedWritesProtocol if its self-test passes and
    the stock path is not forced, else GuardedProtocol (with one warning when it fell back).

    Raises RuntimeError when even the request limits cannot be applied to this uvicorn: a
    server without them would accept any amount of headers.
    """
    problem = self_test(GuardedProtocol)
    if problem is not None:
        raise RuntimeError(
            f"uvicorn {version('uvicorn')} does not work with keybroker's request limits "
            f"({problem}); install a uvicorn within the range pyproject.toml names"
        )
    if stock:
        return GuardedProtocol
    problem = self_test(JoinedWritesProtocol)
    if problem is not None:
        logger.warning(
            "uvicorn %s: keybroker's faster server protocol failed its self-test (%s); "
            "serving with uvicorn's own protocol instead",
            version("uvicorn"),
            problem,
        )
        return GuardedProtocol
    return JoinedWritesProtocol


class _ProbeTransport:
    """What a socket transport offers uvicorn's protocol; records what is written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.eof = False

    def write(self, data: bytes) -> None:
        if not self.closing:
            self.written.append(bytes(data))

    def writelines(self, lines: Iterable[bytes]) -> None:
        for line in lines:
            self.write(line)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: object) -> None:
        pass


def self_test(protocol: type[GuardedProtocol]) -> str | None:
    """Serve probe requests through ``protocol`` on a transport of our own, in a loop of our
    own; what went wrong, or None. Every internal a protocol here relies on is exercised: the
    parser callbacks and the refusals (both), the cycle, its flow control, ``send`` in one step
    and the joined writes (JoinedWritesProtocol)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_probe(protocol, loop))
    except Exception as exc:  # an internal renamed or changed: that is the finding
        return f"{type(exc).__name__}: {exc}"
    finally:
        loop.close()


async def _probe(protocol: type[GuardedProtocol], loop: asyncio.AbstractEventLoop) -> str | None:
    checks: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        offered = send_now.offered(scope, send)
        if (offered is not None) != issubclass(protocol, JoinedWritesProtocol):
            checks.append("send_now offered wrongly")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if offered is not None:
            if not offered.ready():
                checks.append("send_now not ready after the head")
            offered(b"one")
            served.pause_writing()  # flow control: the transport's buffer is full
            if offered.ready():
                checks.append("send_now ready while writing is paused")
            served.resume_writing()
        else:
            await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})
        if offered is not None and offered.ready():
            checks.append("send_now ready after the answer completed")

    def serve(request: bytes) -> tuple[GuardedProtocol, _ProbeTransport]:
        config = uvicorn.Config(app, lifespan="off", log_level="critical", access_log=False)
        config.load()
        proto = protocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        transport = _ProbeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        proto.data_received(request)
        return proto, transport

    served, transport = serve(b"GET /probe HTTP/1.1\r\nhost: probe\r\n\r\n")
    for _ in range(20):  # the app's task and the end-of-turn flush
        await asyncio.sleep(0)
    served.connection_lost(None)
    out = b"".join(transport.written)
    if not out.startswith(b"HTTP/1.1 200 ") or not out.endswith(
        b"\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
    ):
        checks.append(f"unexpected answer {out[-60:]!r}")
    if issubclass(protocol, JoinedWritesProtocol) and len(transport.written) != 1:
        checks.append(f"an answer of one turn not joined ({len(transport.written)} writes)")
    too_many = b"".join(b"x-%d: 1\r\n" % i for i in range(MAX_FIELDS + 1))
    too_long = b"x-long: " + b"a" * MAX_HEAD_BYTES + b"\r\n"
    for name, head in (("fields", too_many), ("bytes", too_long)):
        refused, transport = serve(b"GET / HTTP/1.1\r\nhost: p\r\n" + head + b"\r\n")
        refused.connection_lost(None)
        if not b"".join(transport.written).startswith(b"HTTP/1.1 431 "):
            checks.append(f"a head over the {name} limit was not refused")
    return "; ".join(checks) or None
