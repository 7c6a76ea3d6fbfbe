"""Sealed records: compact JWE (RFC 7516), ``alg=A256KW``, ``enc=A256GCM``.

The protected header carries the wrapping key's ``kid`` and two registered parameters,
``kb_sub`` (the row the record belongs to) and ``kb_use`` (its purpose). They are
authenticated by AES-GCM (RFC 7516 §5.1 step 14: the protected header is the AAD) and are
compared after decryption, so a ciphertext copied into another row or purpose is refused.

Sealing goes through joserfc. Opening is a straight run of checks over the one shape we
write, on ``cryptography``'s primitives: the proxy opens two records per request, and
joserfc's general decryption cost about 100 µs of the proxy's CPU per request there
(docs/benchmarks.md); this path costs about a fifth of that and accepts strictly less.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap
from joserfc import jwe
from joserfc.jwk import OctKey
from joserfc.registry import HeaderParameter

from keybroker.crypto.keyring import KeyRing

ALG = "A256KW"
ENC = "A256GCM"
DIRECT = "dir"
IV_BYTES = 12  # RFC 7518 §5.3: A256GCM uses a 96-bit IV and a 128-bit tag
TAG_BYTES = 16
CEK_BYTES = 32
# Five base64url segments (RFC 7516 §7.1); anything else is refused before decoding.
_SEGMENT = r"[A-Za-z0-9_-]"
COMPACT_RE = re.compile(rf"^{_SEGMENT}+\.{_SEGMENT}*\.{_SEGMENT}+\.{_SEGMENT}*\.{_SEGMENT}+$")

_HEADERS = {
    "kb_sub": HeaderParameter("the row this record is bound to", "str", required=True),
    "kb_use": HeaderParameter("the purpose this record is bound to", "str", required=True),
}
# Only what we write is accepted when opening: no algorithm confusion (RFC 8725 §3.1).
WRAPPED = jwe.JWERegistry(header_registry=_HEADERS, algorithms=[ALG, ENC])
DIRECT_REGISTRY = jwe.JWERegistry(header_registry=_HEADERS, algorithms=[DIRECT, ENC])


class SealedRecordError(ValueError):
    """A sealed record could not be opened: tampered, misplaced or malformed."""


@dataclass(frozen=True)
class Binding:
    subject: str
    purpose: str


def record_kid(token: str) -> str:
    """The ``kid`` from a record's protected header, without decrypting it."""
    try:
        kid = _header(token.split(".", 1)[0])["kid"]
    except KeyError:
        raise SealedRecordError("sealed record has no kid") from None
    if not isinstance(kid, str):
        raise SealedRecordError("sealed record has no kid")
    return kid


def seal(plaintext: bytes, ring: KeyRing, *, binding: Binding) -> str:
    kid = ring.active_kid
    header = {
        "alg": ALG,
        "enc": ENC,
        "kid": kid,
        "kb_sub": binding.subject,
        "kb_use": binding.purpose,
    }
    return jwe.encrypt_compact(header, plaintext, ring.oct_key(kid), registry=WRAPPED)


def open_sealed(token: str, ring: KeyRing, *, expected_binding: Binding) -> bytes:
    """Open a record sealed by :func:`seal`; raises UnknownKidError or SealedRecordError."""
    record = parse(token, expected_alg=ALG, expected_binding=expected_binding)
    kid = record.header.get("kid")
    if not isinstance(kid, str):
        raise SealedRecordError("sealed record has no kid")
    try:
        cek = aes_key_unwrap(ring.key(kid), record.wrapped_key)  # RFC 3394 integrity check
    except (InvalidUnwrap, ValueError):
        raise SealedRecordError("sealed record failed to decrypt") from None
    return record.decrypt(cek)


def seal_direct(plaintext: bytes, key: bytes, *, binding: Binding) -> str:
    header = {"alg": DIRECT, "enc": ENC, "kb_sub": binding.subject, "kb_use": binding.purpose}
    return jwe.encrypt_compact(header, plaintext, OctKey.import_key(key), registry=DIRECT_REGISTRY)


def open_direct(token: str, key: bytes, *, expected_binding: Binding) -> bytes:
    return parse_direct(token, expected_binding=expected_binding).decrypt(key)


def parse_direct(token: str, *, expected_binding: Binding) -> ParsedRecord:
    """A record sealed by :func:`seal_direct`, checked and split, for opening later."""
    record = parse(token, expected_alg=DIRECT, expected_binding=expected_binding)
    if record.wrapped_key:  # RFC 7518 §4.5: with "dir" the encrypted key is empty
        raise SealedRecordError("sealed record has a key where none belongs")
    return record


@dataclass(frozen=True)
class ParsedRecord:
    """A sealed record that passed every check but the AES-GCM tag, which needs the key."""

    header: dict[str, Any] = field(repr=False)
    aad: bytes = field(repr=False)
    wrapped_key: bytes = field(repr=False)
    iv: bytes = field(repr=False)
    ciphertext_and_tag: bytes = field(repr=False)

    def decrypt(self, cek: bytes) -> bytes:
        if len(cek) != CEK_BYTES:
            raise SealedRecordError("sealed record failed to decrypt")
        try:
            # The AAD is the protected header as encoded (RFC 7516 §5.2 step 14): the header
            # checked by parse() is authenticated here, or nothing is returned.
            return AESGCM(cek).decrypt(self.iv, self.ciphertext_and_tag, self.aad)
        except InvalidTag:
            raise SealedRecordError("sealed record failed to decrypt") from None


def _b64(segment: str) -> bytes:
    # The segment's alphabet was checked by COMPACT_RE; a bad length still fails here.
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise SealedRecordError("sealed record is not base64url") from None
    # One spelling per record: stray low bits in the last character are refused, not ignored
    # (RFC 4648 §3.5 lets a decoder reject them; joserfc does, and so do we).
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise SealedRecordError("sealed record is not canonical base64url")
    return raw


def _header(segment: str) -> dict[str, Any]:
    try:
        header = json.loads(_b64(segment))
    except (ValueError, UnicodeDecodeError):
        raise SealedRecordError("sealed record has no readable header") from None
    if not isinstance(header, dict):
        raise SealedRecordError("sealed record has no readable header")
    return header


def parse(token: str, *, expected_alg: str, expected_binding: Binding) -> ParsedRecord:
    """RFC 7516 §5.2 steps 1-4 and the header checks, for the one shape we write."""
    if not COMPACT_RE.match(token):
        raise SealedRecordError("sealed record is not a compact JWE")
    protected, wrapped_b64, iv_b64, ciphertext_b64, tag_b64 = token.split(".")
    header = _header(protected)
    # Only what we write is accepted: no algorithm confusion (RFC 8725 §3.1), no
    # compression, and no critical extensions we would have to understand (RFC 7516 §4.1.13).
    if header.get("alg") != expected_alg or header.get("enc") != ENC:
        raise SealedRecordError("sealed record uses an algorithm keybroker does not accept")
    if "zip" in header or "crit" in header:
        raise SealedRecordError("sealed record asks for features keybroker does not accept")
    if header.get("kb_sub") != expected_binding.subject:
        raise SealedRecordError("sealed record belongs to another row")
    if header.get("kb_use") != expected_binding.purpose:
        raise SealedRecordError("sealed record belongs to another purpose")
    iv, tag = _b64(iv_b64), _b64(tag_b64)
    if len(iv) != IV_BYTES or len(tag) != TAG_BYTES:
        raise SealedRecordError("sealed record has a malformed IV or tag")
    return ParsedRecord(
        header, protected.encode("ascii"), _b64(wrapped_b64), iv, _b64(ciphertext_b64) + tag
    )


def rewrap(token: str, ring: KeyRing, *, expected_binding: Binding) -> str:
    """Re-seal a record under the ring's active kid (``keybroker keys rewrap``)."""
    return seal(
        open_sealed(token, ring, expected_binding=expected_binding), ring, binding=expected_binding
    )
