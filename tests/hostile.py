"""A hostile upstream on a loopback port: an OpenAI look-alike that misbehaves on request.

It answers like the API (``GET /models``, ``POST /chat/completions``) unless a request carries
``x-stainless-hostile: <case>`` (a header the proxy forwards), and then it does what a broken or
malicious upstream might: an endless head, a gzip bomb, a 101, an unasked second answer, a slow
answer. ``spoof_idle()`` writes a forged answer on every connection that sits idle. Every
answer it sends carries the request's ``x-stainless-tag``, so a test sees which request an
answer was for; forged ones carry ``SPOOF``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import threading
import time
import zlib
from dataclasses import dataclass, field
from functools import cache

SPOOF = b"spoofed-answer"


@cache
def gzip_bomb(size: int = 1 << 30) -> bytes:
    """``size`` zero bytes, gzip-coded: about 1 MB for 1 GB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    parts = [packer.compress(block) for _ in range(size // len(block))]
    parts.append(packer.flush())
    return b"".join(parts)


def answer(body: bytes, *, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )


def _unread(writer: asyncio.StreamWriter) -> bool:
    poll = select.poll()
    poll.register(writer.get_extra_info("socket").fileno(), select.POLLIN)
    return bool(poll.poll(0))


@dataclass
class Hostile:
    url: str = ""
    connections: int = 0
    open_now: int = 0
    most_open: int = 0  # the most connections open at one time
    requests: list[tuple[str, str]] = field(default_factory=list)  # (case, tag)
    slow_seconds: float = 2.0
    _idle: dict[asyncio.StreamWriter, float] = field(default_factory=dict)  # since when
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Hostile:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)
            )
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}/v1"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="hostile-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop = self._loop
        assert loop is not None
        assert self._server is not None
        loop.call_soon_threadsafe(self._server.close)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)

    def spoof_idle(self, idle_for: float) -> int:
        """Write a forged answer on every connection idle for ``idle_for`` seconds or more;
        returns how many got one. (An answer written on a connection whose next request is
        already on its way cannot be told from the real one, in HTTP/1.1: the test is of a
        connection that sat idle in the proxy's pool.)"""
        assert self._loop is not None

        async def spoof() -> int:
            now = time.monotonic()
            writers = [w for w, since in self._idle.items() if now - since >= idle_for]
            spoofed = 0
            for writer in writers:
                if not _unread(writer):  # no request waits unread on it (this thread lags)
                    writer.write(answer(json.dumps({"tag": SPOOF.decode()}).encode()))
                    spoofed += 1
            return spoofed

        return asyncio.run_coroutine_threadsafe(spoof(), self._loop).result(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                self._idle[writer] = time.monotonic()
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                finally:
                    self._idle.pop(writer, None)
                lines = head[:-4].split(b"\r\n")
                fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
                length = int(fields.get(b"content-length", b"0"))
                if length:
                    await reader.readexactly(length)
                case = fields.get(b"x-stainless-hostile", b"").decode()
                tag = fields.get(b"x-stainless-tag", b"").decode()
                self.requests.append((case, tag))
                ok = answer(json.dumps({"object": "list", "data": [], "tag": tag}).encode())
                if not await self._misbehave(case, ok, writer):
                    return
        except ConnectionError:
            return
        finally:
            self.open_now -= 1
            with contextlib.suppress(ConnectionError):
                writer.close()

    async def _misbehave(self, case: str, ok: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer (or not); False ends the connection."""
        if case == "huge-headers":  # 300 MB of head, or until the reader hangs up
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
            line = b"x-filler: " + b"a" * 1000 + b"\r\n"
            for _ in range(300 * 1024):
                writer.write(line)
                await writer.drain()
            return False
        if case == "many-headers":
            writer.write(ok.replace(b"\r\n\r\n", b"\r\n" + b"x-many: 1\r\n" * 500 + b"\r\n", 1))
        elif case == "gzip-bomb":  # 1 GB of zeros in about 1 MB
            bomb = gzip_bomb()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip"
                b"\r\ncontent-length: %d\r\n\r\n" % len(bomb)
            )
            for start in range(0, len(bomb), 64 * 1024):
                writer.write(bomb[start : start + 64 * 1024])
                await writer.drain()
        elif case == "upgrade":
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                b"connection: upgrade\r\n\r\n" + b"\x81\x05hello" * 100
            )
        elif case == "second-answer":  # the answer asked for, then one nobody asked for
            writer.write(ok + answer(json.dumps({"tag": SPOOF.decode()}).encode()))
        elif case == "slow":
            await asyncio.sleep(self.slow_seconds)
            writer.write(ok)
        else:
            writer.write(ok)
        await writer.drain()
        return True
