"""uvicorn's HTTP protocol with a response's writes joined into one send.

uvicorn writes a response's head and its body with separate ``transport.write`` calls, so a
small answer costs two ``send`` syscalls and two loopback segments, and the client wakes up
twice. Under load those two writes were a fifth of the worker's CPU samples (py-spy, 32
connections, bench/NOTES.md). Here, writes made during one turn of the event loop are held and
sent together at the end of that turn: the head and body of an answer go out as one segment,
and a streamed chunk waits at most for the rest of the turn it was written in. A complete
answer goes out at once, not at the end of the turn: what the app does after answering
(recording usage) is not the client's wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class JoinedWrites:
    """A transport that holds writes until the end of the loop's turn, then sends them as one.

    Closing or handing over the connection sends what is held first, so nothing written is
    lost or reordered; after an abort, or once the client has gone, what is held is dropped,
    as the transport itself would drop it.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if not self._held:
            return
        data = b"".join(self._held)
        self._held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

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


class JoinedWritesProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.joined = JoinedWrites(transport, self.loop)
        super().connection_made(self.joined)  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.joined.flush()
        super().on_response_complete()
