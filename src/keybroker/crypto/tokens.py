"""App tokens and grant copies of the provider key.

Token: ``sk-kb-<grant id>-<secret><checksum>``. The prefix lets secret scanners match it,
the CRC32 checksum lets the proxy refuse a mangled token without a database read (the way
GitHub's token format does), and only a SHA-256 of the 256-bit secret is stored.

Grant copy (DESIGN.md, Key custody): the provider key sealed twice. Inside, under a key
derived by HKDF-SHA256 (RFC 5869) from the token's secret, salted with the grant id; outside,
under the active master key, so ``keys rewrap`` can move it without knowing any token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

from keybroker.crypto import vault
from keybroker.crypto.keyring import KeyRing

PREFIX = "sk-kb-"
GRANT_ID_HEX = 20
SECRET_BYTES = 32
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SECRET_CHARS = 43  # ceil(256 / log2(62))
CHECKSUM_CHARS = 6  # ceil(32 / log2(62))
TOKEN_RE = re.compile(
    rf"^{PREFIX}([0-9a-f]{{{GRANT_ID_HEX}}})-([0-9A-Za-z]{{{SECRET_CHARS}}})"
    rf"([0-9A-Za-z]{{{CHECKSUM_CHARS}}})$"
)
TOKEN_LENGTH = len(PREFIX) + GRANT_ID_HEX + 1 + SECRET_CHARS + CHECKSUM_CHARS
INNER_USE = "grant-copy.inner"
OUTER_USE = "grant-copy.outer"
_HKDF_INFO = b"keybroker grant copy v1"


class MalformedTokenError(ValueError):
    """Not a keybroker token: wrong shape or checksum. Decided without any storage read."""


def _b62(number: int, width: int) -> str:
    chars = []
    while number:
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars)).rjust(width, "0")


def _checksum(body: str) -> str:
    return _b62(zlib.crc32(body.encode()), CHECKSUM_CHARS)


def new_grant_id() -> str:
    return secrets.token_hex(GRANT_ID_HEX // 2)


@dataclass(frozen=True)
class AppToken:
    grant_id: str
    secret: str

    def __str__(self) -> str:
        body = f"{PREFIX}{self.grant_id}-{self.secret}"
        return body + _checksum(body)

    def __repr__(self) -> str:  # never show the secret
        return f"AppToken(grant_id={self.grant_id!r}, secret=...)"

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)


def new_token(grant_id: str) -> AppToken:
    return AppToken(grant_id, _b62(secrets.randbits(SECRET_BYTES * 8), SECRET_CHARS))


def parse_token(text: str) -> AppToken:
    if len(text) != TOKEN_LENGTH:
        raise MalformedTokenError("token has the wrong length")
    match = TOKEN_RE.match(text)
    if match is None:
        raise MalformedTokenError("token has the wrong shape")
    grant_id, secret, checksum = match.groups()
    if not hmac.compare_digest(_checksum(f"{PREFIX}{grant_id}-{secret}"), checksum):
        raise MalformedTokenError("token checksum does not match")
    return AppToken(grant_id, secret)


def hash_secret(secret: str) -> str:
    # A 256-bit random secret needs no slow hash: brute force is already out of reach.
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(token: AppToken, stored_hash: str) -> bool:
    return hmac.compare_digest(token.secret_hash, stored_hash)


def _inner_key(token: AppToken) -> bytes:
    # HKDF-SHA256 (RFC 5869 §2.2-2.3) for one 32-byte block: the same bytes as cryptography's
    # HKDF (tests/crypto/test_tokens.py) at half the cost on the hot path. Not hmac.digest():
    # on CPython 3.11 it releases the GIL, and a busy thread then holds the event loop for a
    # whole switch interval (5 ms) each time.
    prk = hmac.new(token.grant_id.encode(), token.secret.encode(), "sha256").digest()
    return hmac.new(prk, _HKDF_INFO + b"\x01", "sha256").digest()


def seal_grant_copy(provider_key: str, token: AppToken, ring: KeyRing) -> str:
    inner = vault.seal_direct(
        provider_key.encode(), _inner_key(token), binding=vault.Binding(token.grant_id, INNER_USE)
    )
    return vault.seal(inner.encode(), ring, binding=vault.Binding(token.grant_id, OUTER_USE))


def open_grant_copy(sealed: str, token: AppToken, ring: KeyRing) -> str:
    return open_inner_layer(open_outer_layer(sealed, token.grant_id, ring), token)


def open_outer_layer(sealed: str, grant_id: str, ring: KeyRing) -> vault.ParsedRecord:
    """The grant copy's inner layer, checked: still sealed under a key only the token gives."""
    inner = vault.open_sealed(sealed, ring, expected_binding=vault.Binding(grant_id, OUTER_USE))
    try:
        text = inner.decode("ascii")
    except UnicodeDecodeError:
        raise vault.SealedRecordError("grant copy has no readable inner layer") from None
    return vault.parse_direct(text, expected_binding=vault.Binding(grant_id, INNER_USE))


def open_inner_layer(inner: vault.ParsedRecord, token: AppToken) -> str:
    if inner.header.get("kb_sub") != token.grant_id:  # parse_direct bound it to its grant
        raise vault.SealedRecordError("sealed record belongs to another row")
    return inner.decrypt(_inner_key(token)).decode()


def rewrap_grant_copy(sealed: str, grant_id: str, ring: KeyRing) -> str:
    """Move a grant copy's outer layer to the active kid; the inner layer is untouched."""
    return vault.rewrap(sealed, ring, expected_binding=vault.Binding(grant_id, OUTER_USE))
