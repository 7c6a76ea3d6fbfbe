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
    """A same-site path to go to after sign-in; anything else falls back (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value
