"""The upstream client on aiohttp, behind the same interface as http1 (upstream.UpstreamClient).

Chosen with KEYBROKER_UPSTREAM_CLIENT=aiohttp: for a deployment that must reach the upstream
through an HTTP(S) proxy (aiohttp honours HTTPS_PROXY and NO_PROXY), or as a stand-by should
the httptools client misbehave. It is slower on the hot path (docs/benchmarks.md) and has no
``relay_to``: every streamed chunk goes through the proxy's task. The same limits hold: a cap
on connections with a pool timeout, head limits, no upgrades, a bound on inflated gzip bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
from yarl import URL

from keybroker.head_limits import MAX_FIELDS, MAX_HEAD_BYTES
from keybroker.proxy.http1 import PoolTimeout, UpstreamProtocolError, checked_request


def _protocol_error(exc: aiohttp.ClientError) -> BaseException:
    """aiohttp's errors as the interface's: OSError stays, the rest is a refused answer."""
    if isinstance(exc, OSError):
        return exc
    return UpstreamProtocolError(f"refused an answer from the upstream: {type(exc).__name__}")


class AiohttpAnswer:
    def __init__(
        self, response: aiohttp.ClientResponse, free: Callable[[], None], gzip_limit: int
    ) -> None:
        self._response = response
        self._free = free
        self.status = response.status
        self.raw_headers = [(name.lower(), value) for name, value in response.raw_headers]
        self.content_type = response.headers.get("content-type", "")
        coding = response.headers.get("content-encoding", "").strip().lower()
        self.decoded = coding == "gzip"
        self.content_length = None if self.decoded else response.content_length
        self._limit = (
            gzip_limit
            if self.decoded and not self.content_type.startswith("text/event-stream")
            else None
        )

    def relay_to(self, sink: Callable[[bytes], bool] | None) -> None:
        return None  # every chunk reaches the reader

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        size = 0
        try:
            async for chunk in self._response.content.iter_any():
                size += len(chunk)
                if self._limit is not None and size > self._limit:
                    raise UpstreamProtocolError("the upstream's gzip answer inflates too far")
                yield chunk
        except aiohttp.ClientError as exc:
            raise _protocol_error(exc) from exc

    @property
    def at_eof(self) -> bool:
        return self._response.content.at_eof()

    def close(self) -> None:
        self._response.close()
        self._free()

    def release(self) -> None:
        if self.at_eof:
            self._response.release()
        else:
            self._response.close()
        self._free()


class AiohttpClient:
    def __init__(
        self,
        base_url: str,
        *,
        read_timeout: float,
        connect_timeout: float = 10.0,
        max_connections: int = 100,
        pool_timeout: float = 10.0,
        gzip_limit: int = 16 * 1024 * 1024,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self.gzip_limit = gzip_limit
        self.busy = 0  # requests holding a connection: never above max_connections
        self._slots: asyncio.Semaphore | None = None  # made in the running loop
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                trust_env=True,  # HTTPS_PROXY, NO_PROXY
                auto_decompress=True,
                max_line_size=MAX_HEAD_BYTES,
                max_field_size=MAX_HEAD_BYTES,
                max_headers=MAX_FIELDS,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def _take_slot(self) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        try:
            async with asyncio.timeout(self.pool_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise PoolTimeout(
                f"all {self.max_connections} upstream connections stayed busy "
                f"for {self.pool_timeout:g} s"
            ) from None
        self.busy += 1

    def _free_slot(self) -> None:
        assert self._slots is not None
        self.busy -= 1
        self._slots.release()

    async def request(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> AiohttpAnswer:
        base = URL(self.base_url)
        checked_request(base.raw_path.rstrip("/").encode() + target, headers)
        url = URL(self.base_url + target.decode("latin-1"), encoded=True)  # sent as it is
        await self._take_slot()
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed:
                freed = True
                self._free_slot()

        try:
            response = await self._session_now().request(
                method,
                url,
                headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
                data=body,
                allow_redirects=False,
                timeout=self._timeout,
            )
        except aiohttp.ClientError as exc:
            free()
            raise _protocol_error(exc) from exc
        except BaseException:
            free()
            raise
        if response.status == 101:  # RFC 9110 §15.2.2: an upgrade nobody asked for
            response.close()
            free()
            raise UpstreamProtocolError("the upstream switched protocols (101)")
        return AiohttpAnswer(response, free, self.gzip_limit)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
