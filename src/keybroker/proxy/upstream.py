"""The one pooled upstream client on the hot path: aiohttp (DESIGN.md has the measurements)."""

from __future__ import annotations

import aiohttp

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


def upstream_request_headers(headers: list[tuple[bytes, bytes]], key: str) -> dict[str, str]:
    out = {"authorization": f"Bearer {key}"}
    for name, value in headers:
        if name in REQUEST_HEADERS or name.startswith(REQUEST_PREFIXES):
            out[name.decode("latin-1")] = value.decode("latin-1")
    return out


def response_headers(upstream: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    # The raw bytes as received: no str round trip per header on the hot path.
    out = []
    for name, value in upstream.raw_headers:
        lower = name.lower()
        if lower in RESPONSE_HEADERS or lower.startswith(RESPONSE_PREFIXES):
            out.append((lower, value))
    return out


class Upstream:
    def __init__(self, base_url: str, read_timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.read_timeout = read_timeout
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.read_timeout),
            auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
