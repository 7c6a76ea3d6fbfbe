"""List endpoints filtered to the grant's own objects, paged as the SDKs expect.

The upstream lists the whole account; the proxy walks its pages (cursor ``after``, OpenAI's
list pagination) and keeps the grant's own objects until it has the ``limit`` the app asked
for. The answer is OpenAI's list shape: ``data``, ``first_id``, ``last_id``, ``has_more``, so
an SDK's auto-pagination asks again with ``after`` = the last own id, which this grant owns.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

PAGE = 100  # the largest page every list endpoint accepts
MAX_PAGES = 100  # at most this many upstream pages (10,000 objects) per app request
LIMITS = {"file": (10_000, 10_000)}  # kind -> (default, largest) when not (20, 100)


@dataclass(frozen=True)
class Fetched:
    status: int
    body: bytes
    request_id: bytes | None


Fetch = Callable[[bytes], Awaitable[Fetched]]
OwnedAmong = Callable[[list[str]], Awaitable[set[str]]]


class ListError(Exception):
    """The upstream answered a page with an error: relay that answer."""

    def __init__(self, fetched: Fetched) -> None:
        super().__init__(fetched.status)
        self.fetched = fetched


def _wanted(kind: str, value: str | None) -> int:
    default, largest = LIMITS.get(kind, (20, 100))
    if value is None or not value.isdigit():
        return default
    return max(1, min(int(value), largest))


async def owned_list(
    rest: str, query: bytes, kind: str, fetch: Fetch, owned_among: OwnedAmong
) -> tuple[dict[str, Any], bytes | None]:
    """The grant's own objects of one list endpoint, and the last upstream request id."""
    params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    wanted = _wanted(kind, dict(params).get("limit"))
    cursor = dict(params).get("after")
    kept = [(k, v) for k, v in params if k not in ("limit", "after")]
    collected: list[dict[str, Any]] = []
    has_more = True
    request_id: bytes | None = None
    for _ in range(MAX_PAGES):
        page = [*kept, ("limit", str(PAGE)), *([("after", cursor)] if cursor else [])]
        fetched = await fetch(f"{rest}?{urlencode(page)}".encode())
        request_id = fetched.request_id or request_id
        if fetched.status != 200:
            raise ListError(fetched)
        data = json.loads(fetched.body)
        items = [i for i in data.get("data") or [] if isinstance(i, dict) and "id" in i]
        own = await owned_among([str(i["id"]) for i in items])
        taken = 0  # items of this page looked at
        while taken < len(items) and len(collected) < wanted:
            if items[taken]["id"] in own:
                collected.append(items[taken])
            taken += 1
        if len(collected) == wanted:
            has_more = taken < len(items) or data.get("has_more") is True
            break
        if data.get("has_more") is not True or not items:
            has_more = False
            break
        cursor = str(items[-1]["id"])
    return (
        {
            "object": "list",
            "data": collected,
            "first_id": collected[0]["id"] if collected else None,
            "last_id": collected[-1]["id"] if collected else None,
            "has_more": has_more,
        },
        request_id,
    )
