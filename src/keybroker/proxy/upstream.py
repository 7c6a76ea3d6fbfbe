"""The upstream on the hot path: which headers cross, and the one pooled client (http1)."""

from __future__ import annotations

from keybroker.proxy.http1 import UpstreamPool, UpstreamResponse

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


def response_headers(upstream: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    # The raw bytes as received (names already lower-case): no str round trip per header.
    return [
        (name, value)
        for name, value in upstream.raw_headers
        if name in RESPONSE_HEADERS or name.startswith(RESPONSE_PREFIXES)
    ]


class Upstream:
    def __init__(self, base_url: str, read_timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.read_timeout = read_timeout
        self.pool: UpstreamPool | None = None

    async def start(self) -> None:
        self.pool = UpstreamPool(self.base_url, read_timeout=self.read_timeout)

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
