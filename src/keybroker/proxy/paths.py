"""Which scope an OpenAI API path needs, and which paths may be forwarded at all."""

from __future__ import annotations

import re

# First path segment under /v1 -> the scope (API family) that covers it.
FAMILIES = {
    "chat": "chat",
    "responses": "chat",
    "completions": "chat",
    "conversations": "chat",
    "assistants": "chat",
    "threads": "chat",
    "embeddings": "embeddings",
    "images": "images",
    "audio": "audio",
    "files": "files",
    "uploads": "files",
    "vector_stores": "files",
    "batches": "files",
    "moderations": "moderations",
    "models": "models",
}
SAFE_PATH = re.compile(r"^(/[A-Za-z0-9_\-.~:]+)+/?$")


class UnsafePathError(ValueError):
    pass


def api_path(raw_path: bytes) -> str:
    """The part after /v1, exactly as sent, if it is a plain path.

    Dot segments, encoded slashes or dots, backslashes and empty segments are refused rather
    than normalised, so nothing but an upstream /v1 path can ever be reached (RFC 3986 §5.2.4).
    """
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise UnsafePathError("non-ASCII path") from None
    if not path.startswith("/v1/"):
        raise UnsafePathError("not under /v1/")
    rest = path[3:]
    if "%" in rest or "\\" in rest or "//" in rest or not SAFE_PATH.match(rest):
        raise UnsafePathError("path is not a plain API path")
    if any(segment in (".", "..") for segment in rest.split("/")):
        raise UnsafePathError("dot segment")
    return rest


def scope_for(rest: str) -> str | None:
    return FAMILIES.get(rest.split("/", 2)[1])
