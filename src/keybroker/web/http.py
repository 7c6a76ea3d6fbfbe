"""Small request/response helpers shared by the JSON endpoints."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

JSON_LIMIT = 64 * 1024


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def problem(status: int, message: str, code: str | None = None) -> JSONResponse:
    """A JSON error; ``code`` tells a page script what it can do about it."""
    body = {"error": message} if code is None else {"error": message, "code": code}
    return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPProblem(413, f"Request body too large (limit {limit // 1024} KiB).")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"Request body too large (limit {limit // 1024} KiB).")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request, limit: int = JSON_LIMIT) -> dict[str, Any]:
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPProblem(400, "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise HTTPProblem(400, "The request body must be a JSON object.")
    return data


def safe_next(value: str | None, default: str = "/settings") -> str:
    """A path on this broker to go to after sign-in; anything else is ``default``.

    Browsers resolve a Location or ``location.assign`` with the WHATWG URL parser, which
    drops tabs and newlines and reads a backslash as "/", so that "/<TAB>/evil" or "/<BSL>evil"
    become "//evil": another host. So only printable ASCII passes (no controls, whitespace or
    non-ASCII), the value starts with exactly one "/", and its path part holds no backslash,
    no "//" and no dot segment (plain or percent-encoded). The page's script checks again
    with ``new URL(next, location.origin)`` before it navigates (static/js/http.js).
    """
    if not value or len(value) > 4096 or not value.startswith("/"):
        return default
    if any(not 0x21 <= ord(c) <= 0x7E for c in value) or "\\" in value:
        return default  # controls, whitespace, non-ASCII, backslashes anywhere
    path = value.split("?", 1)[0].split("#", 1)[0]
    if "//" in path:
        return default
    segments = path.lower().replace("%2e", ".").split("/")
    if any(s in (".", "..") for s in segments):
        return default
    return value
