"""Cross-site request checks for cookie-authenticated, state-changing requests.

Browsers send ``Sec-Fetch-Site`` (Fetch Metadata) on every request; where it is present it
decides, otherwise ``Origin`` must be ours. A request with neither is
not from a browser, so no cookie was lent to it by a third party.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_cross_site(conn: HTTPConnection, *, expected_origin: str, method: str) -> bool:
    if method in SAFE_METHODS:
        return False
    site = conn.headers.get("sec-fetch-site")
    if site is not None:
        # Fetch Metadata is a forbidden header a page cannot set, and it stays exact where
        # Referrer-Policy: no-referrer turns Origin into "null" on form posts.
        return site != "same-origin"
    origin = conn.headers.get("origin")
    return origin is not None and origin != expected_origin
