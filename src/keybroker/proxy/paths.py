"""Which paths may be forwarded at all: plain paths under /v1 (the scopes say which of them
a grant may use, proxy.scopes)."""

from __future__ import annotations

import re

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
