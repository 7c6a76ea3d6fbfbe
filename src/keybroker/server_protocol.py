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
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from keybroker import send_now


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


class JoinedWritesProtocol(HttpToolsProtocol):
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
