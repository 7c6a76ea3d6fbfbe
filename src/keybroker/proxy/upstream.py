"""The upstream on the hot path: which headers cross, and the pooled client behind one small
interface (UpstreamClient): keybroker's own on httptools (http1, the default) or one backed by
aiohttp (aiohttp_client), chosen by KEYBROKER_UPSTREAM_CLIENT."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from keybroker.proxy.http1 import UpstreamPool
from keybroker.settings import Settings


class UpstreamAnswer(Protocol):
    """One answer, read as it arrives; its body handed over decoded."""

    status: int
    raw_headers: list[tuple[bytes, bytes]]  # names lower-case
    content_type: str
    content_length: int | None  # None when decoded (gzip) or not declared
    decoded: bool  # arrived gzip-coded

    def relay_to(self, sink: Callable[[bytes], bool] | None) -> None:
        """Hand chunks to ``sink`` as they arrive, where the client can (see http1)."""

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    @property
    def at_eof(self) -> bool: ...

    def close(self) -> None:
        """Drop the connection: the upstream sees the request cancelled."""

    def release(self) -> None:
        """Give a fully read connection back to the pool; anything else is closed."""


class UpstreamClient(Protocol):
    async def request(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamAnswer:
        """Send a request for ``target`` under the base URL; return once the head is in.

        Raises http1.PoolTimeout (every connection busy for the pool timeout), TimeoutError,
        ConnectionError (http1.UpstreamProtocolError: an answer refused), OSError, or
        ValueError (a target or header that would split the request)."""
        ...

    async def aclose(self) -> None: ...


# Request headers an app may send upstream; everything else (Authorization, cookies, Origin,
# Referer, forwarding and hop-by-hop headers) stops here.
REQUEST_HEADERS = frozenset(
    {
        b"content-type",
        b"accept",
        b"openai-beta",
        b"idempotency-key",
    }
)
REQUEST_PREFIXES = (b"x-stainless-",)
# Response headers the app gets back; the owner's organisation and project ids do not.
RESPONSE_HEADERS = frozenset(
    {
        b"content-type",
        b"content-disposition",
        b"x-request-id",
        b"openai-processing-ms",
        b"openai-version",
        b"retry-after",
    }
)
RESPONSE_PREFIXES = (b"x-ratelimit-",)


def upstream_request_headers(
    headers: list[tuple[bytes, bytes]], key: str
) -> list[tuple[bytes, bytes]]:
    out = [(b"authorization", b"Bearer " + key.encode("latin-1"))]
    for name, value in headers:
        if name in REQUEST_HEADERS or name.startswith(REQUEST_PREFIXES):
            out.append((name, value))
    return out


def response_headers(upstream: UpstreamAnswer) -> list[tuple[bytes, bytes]]:
    # The raw bytes as received (names already lower-case): no str round trip per header.
    return [
        (name, value)
        for name, value in upstream.raw_headers
        if name in RESPONSE_HEADERS or name.startswith(RESPONSE_PREFIXES)
    ]


class Upstream:
    """The configured client, made when the app starts (it needs the running loop)."""

    def __init__(
        self, base_url: str, read_timeout: float, *, client: str = "http1", **options: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        # read_timeout, connect_timeout, max_connections, pool_timeout, gzip_limit
        self.options = {"read_timeout": read_timeout, **options}
        self.pool: UpstreamClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Upstream:
        return cls(
            settings.upstream_url,
            settings.upstream_timeout,
            client=settings.upstream_client,
            connect_timeout=settings.upstream_connect_timeout,
            max_connections=settings.upstream_max_connections,
            pool_timeout=settings.upstream_pool_timeout,
            gzip_limit=settings.upstream_gzip_limit,
        )

    async def start(self) -> None:
        make: Callable[..., UpstreamClient] = UpstreamPool
        if self.client == "aiohttp":
            from keybroker.proxy.aiohttp_client import AiohttpClient

            make = AiohttpClient
        self.pool = make(self.base_url, **self.options)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()
