"""Errors in OpenAI's shape, so the official SDKs raise their usual exception classes."""

from __future__ import annotations

import json
import re

from starlette.types import Send

from keybroker.proxy.key_scrub import KeyScrubber


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}
    ).encode()


async def send_error(
    send: Send,
    status: int,
    message: str,
    kind: str,
    code: str | None,
    headers: list[tuple[bytes, bytes]] | None = None,
    param: str | None = None,
) -> None:
    body = error_body(message, kind, code, param)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


INVALID_KEY = (
    401,
    "Incorrect API key provided. Get a keybroker key from the app's sign-in.",
    "invalid_request_error",
    "invalid_api_key",
)
ENDED = (
    401,
    "This keybroker key was revoked or has expired. Sign in to the app again.",
    "invalid_request_error",
    "invalid_api_key",
)


# Key-shaped text: "sk-" and what follows in a key or its masked echo (OpenAI answers a wrong
# key with "sk-proj-********wxyz" or "sk-proj-…wxyz"; some compatible servers echo it whole),
# with any of its characters possibly written as a JSON \\u escape (RFC 8259 §7).
_KEY_SHAPED = re.compile(
    rb"(?:s|\\u0073)(?:k|\\u006[bB])(?:-|\\u002[dD])"
    rb"(?:[A-Za-z0-9_\-*.]|\xe2\x80\xa6|\\u2026|\\u00[0-9a-fA-F]{2})*"
)
HIDDEN = b"[a key, hidden by keybroker]"
ERROR_BODY_LIMIT = 1024 * 1024


def scrub(body: bytes, scrubber: KeyScrubber) -> bytes:
    """An upstream error body with the key (whole, escaped or masked), and anything shaped
    like a key, replaced."""
    return _KEY_SHAPED.sub(HIDDEN, scrubber.scrub(body, HIDDEN))
