"""The owner's key out of everything relayed to the app: headers and bodies of every status.

The proxy knows the exact key it sent upstream for this request, so it looks for that key:
as bytes, with any of its characters written as a JSON escape (RFC 8259 §7: ``\\u002d``
for ``-``, ``\\u0073`` for ``s``), and in the masked shapes OpenAI echoes (the key's first
characters, a run of ``*`` or an ellipsis, then its real last four). A hit is overwritten
with the same number of bytes, so an upstream Content-Length stays true and a body can be
relayed as it streams. The common case costs a few ``bytes.find`` calls per chunk: the regex
runs only when a chunk holds an escape of an ASCII character or the key's first characters.
"""

from __future__ import annotations

import re

# A mask run as OpenAI writes it: stars, dots, or an ellipsis (raw UTF-8 or JSON-escaped).
_MASK = rb"(?:\*|\.|\xe2\x80\xa6|\\u2026)"
MASK_RUN_LIMIT = 64  # stars or dots between a masked key's ends
PREFIX_LENGTH = 3  # "sk-": where a masked echo starts
# A key is ASCII: only an escape of a printable ASCII character can spell part of it, so
# text escaping only other characters (\\u00e9, \\u4e2d) skips the slower search below.
_ASCII_ESCAPE = re.compile(rb"\\u00[2-7][0-9a-fA-F]")


def _char(byte: int) -> bytes:
    """One key character, as itself or as a JSON \\u escape (hex in either case)."""
    plain = re.escape(bytes([byte]))
    hex_digits = b"%04x" % byte
    escaped = b"".join(
        b"[%s%s]" % (bytes([d]), bytes([d]).upper()) if chr(d).isalpha() else bytes([d])
        for d in hex_digits
    )
    return b"(?:" + plain + rb"|\\u" + escaped + b")"


def _spelled(raw: bytes) -> bytes:
    return b"".join(_char(byte) for byte in raw)


class KeyScrubber:
    """Finds one key (whole, escaped or masked) in relayed bytes and overwrites it."""

    def __init__(self, key: str) -> None:
        self.raw = key.encode("utf-8", "replace")
        self.prefix = self.raw[:PREFIX_LENGTH]
        self._pattern: re.Pattern[bytes] | None = None
        # The longest hit: every character escaped (6 bytes each); a chunk's last this-many
        # bytes wait for the next chunk so that a key split across chunks is still found.
        masked = 6 * (PREFIX_LENGTH + MASK_RUN_LIMIT + 4) + 6 * len(self.raw)
        self.window = max(6 * len(self.raw), masked)

    @property
    def pattern(self) -> re.Pattern[bytes]:
        if self._pattern is None:  # built once per request, and only when needed
            whole = _spelled(self.raw)
            alternatives = [whole]
            if len(self.raw) > 12:  # a masked echo only for keys long enough to mask
                key_char = rb"(?:[A-Za-z0-9_\-]|\\u00[0-9a-fA-F]{2})"
                masked = _spelled(self.prefix) + key_char + b"{0,%d}" % len(self.raw)
                masked += _MASK + b"{1,%d}" % MASK_RUN_LIMIT + _spelled(self.raw[-4:])
                alternatives.append(masked)
            self._pattern = re.compile(b"|".join(alternatives))
        return self._pattern

    @staticmethod
    def _filler(match: re.Match[bytes]) -> bytes:
        return b"*" * (match.end() - match.start())

    def scrub(self, data: bytes, hidden: bytes | None = None) -> bytes:
        """data with every spelling of the key overwritten by as many '*' bytes (or by
        hidden, for a body read whole whose length is set after)."""
        if not self.raw:
            return data
        if self.raw in data:
            data = data.replace(self.raw, hidden or b"*" * len(self.raw))
        if (self.prefix and self.prefix in data) or (
            b"\\u00" in data and _ASCII_ESCAPE.search(data) is not None
        ):
            data = self.pattern.sub(hidden or self._filler, data)
        return data

    def headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Relayed response headers with the key out of every value."""
        return [(name, self.scrub(value)) for name, value in headers]

    def stream(self) -> StreamScrub:
        return StreamScrub(self)


class StreamScrub:
    """A body relayed in chunks: the key is found even when a chunk boundary splits it."""

    def __init__(self, scrubber: KeyScrubber) -> None:
        self.scrubber = scrubber
        self.tail = b""

    def take(self, chunk: bytes) -> bytes:
        data = self.scrubber.scrub(self.tail + chunk) if self.tail else self.scrubber.scrub(chunk)
        window = self.scrubber.window
        if len(data) <= window:
            self.tail = data
            return b""
        self.tail = data[-window:]
        return data[:-window]

    def rest(self) -> bytes:
        out, self.tail = self.tail, b""
        return out
