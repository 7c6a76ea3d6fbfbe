"""Sealed records: compact JWE (RFC 7516), ``alg=A256KW``, ``enc=A256GCM``.

The protected header carries the wrapping key's ``kid`` and two registered parameters,
``kb_sub`` (the row the record belongs to) and ``kb_use`` (its purpose). They are
authenticated by AES-GCM (RFC 7516 §5.1 step 14: the protected header is the AAD) and are
compared after decryption, so a ciphertext copied into another row or purpose is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from joserfc.registry import HeaderParameter
from joserfc.util import urlsafe_b64decode

from keybroker.crypto.keyring import KeyRing

ALG = "A256KW"
ENC = "A256GCM"
DIRECT = "dir"

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
        header = json.loads(urlsafe_b64decode(token.split(".", 1)[0].encode()))
        kid = header["kid"]
    except (ValueError, KeyError, TypeError, IndexError):
        raise SealedRecordError("sealed record has no readable header") from None
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
    key = ring.oct_key(record_kid(token))
    return _decrypt(token, key, WRAPPED, expected_binding)


def seal_direct(plaintext: bytes, key: bytes, *, binding: Binding) -> str:
    header = {"alg": DIRECT, "enc": ENC, "kb_sub": binding.subject, "kb_use": binding.purpose}
    return jwe.encrypt_compact(header, plaintext, OctKey.import_key(key), registry=DIRECT_REGISTRY)


def open_direct(token: str, key: bytes, *, expected_binding: Binding) -> bytes:
    return _decrypt(token, OctKey.import_key(key), DIRECT_REGISTRY, expected_binding)


def _decrypt(token: str, key: OctKey, registry: jwe.JWERegistry, expected: Binding) -> bytes:
    try:
        result = jwe.decrypt_compact(token, key, registry=registry)
    except (JoseError, ValueError, TypeError):
        raise SealedRecordError("sealed record failed to decrypt") from None
    header = result.protected
    if header.get("kb_sub") != expected.subject:
        raise SealedRecordError("sealed record belongs to another row")
    if header.get("kb_use") != expected.purpose:
        raise SealedRecordError("sealed record belongs to another purpose")
    if result.plaintext is None:
        raise SealedRecordError("sealed record is empty")
    return result.plaintext


def rewrap(token: str, ring: KeyRing, *, expected_binding: Binding) -> str:
    """Re-seal a record under the ring's active kid (``keybroker keys rewrap``)."""
    return seal(
        open_sealed(token, ring, expected_binding=expected_binding), ring, binding=expected_binding
    )
