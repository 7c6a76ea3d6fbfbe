"""The one-line notice a page shows after an action: "done" (role=status) or "error" (alert).

A notice travels in the redirect's query string, signed with itsdangerous under its own salt,
so that a page shows only text keybroker itself wrote: a crafted link such as
``/settings?error=Your+account+is+locked,+call+...`` puts no words of an attacker's on the
broker's own origin. A signed notice lasts a few minutes, so an old one cannot be replayed
for long either; anything unsigned, forged or stale shows nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeTimedSerializer

Kind = Literal["done", "error"]
NOTICE_TTL_SECONDS = 300
MAX_TEXT = 300


@dataclass(frozen=True)
class Notice:
    kind: Kind
    text: str


class Notices:
    def __init__(self, secret_key: str) -> None:
        self._signer = URLSafeTimedSerializer(secret_key, salt="keybroker.notice")

    def url(self, path: str, kind: Kind, text: str, fragment: str = "") -> str:
        """``path`` with the signed notice in its query, and ``#fragment`` if given."""
        token = self._signer.dumps([kind, text[:MAX_TEXT]])
        return f"{path}?notice={quote(token)}" + (f"#{fragment}" if fragment else "")

    def read(self, token: str | None) -> Notice | None:
        if not token or len(token) > 2 * MAX_TEXT + 200:
            return None
        try:
            data = self._signer.loads(token, max_age=NOTICE_TTL_SECONDS)
        except BadSignature:
            return None
        if (
            not isinstance(data, list)
            or len(data) != 2
            or data[0] not in ("done", "error")
            or not isinstance(data[1], str)
        ):
            return None
        return Notice(data[0], data[1])
