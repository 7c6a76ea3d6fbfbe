"""Sealing to a key that only the holder of a secret code can derive.

The device flow (RFC 8628) learns the owner's consent long after it issued the device code,
whose hash alone is stored. To hand the owner's key to the device without ever storing it
where a database reader (even one with the master keys) could open it, the device code
determines an X25519 key pair: only its public half is stored. Consent seals to it with an
ephemeral key (ECDH, RFC 7748 §6.1, then HKDF-SHA256, RFC 5869) as a direct-key JWE bound to
its row; redemption re-derives the private half from the presented device code.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keybroker.crypto import vault

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(raw) != 32:
        raise vault.SealedRecordError("not an X25519 public key")
    return raw


def _private_key(secret: str) -> X25519PrivateKey:
    seed = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"keybroker sealed box",
        info=b"keybroker sealed box x25519 v1",
    ).derive(secret.encode())
    return X25519PrivateKey.from_private_bytes(seed)


def public_key_for(secret: str) -> str:
    """The public half of the key pair ``secret`` determines (base64url, 43 characters)."""
    return _b64(_private_key(secret).public_key().public_bytes(*_RAW))


def _content_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral + recipient,
        info=b"keybroker sealed box content v1",
    ).derive(shared)


@dataclass(frozen=True)
class Sealed:
    ephemeral: str  # base64url X25519 public key
    record: str = field(repr=False)  # compact JWE, "dir" + A256GCM, bound to its row


def seal_to(plaintext: bytes, public_key: str, *, binding: vault.Binding) -> Sealed:
    recipient = _unb64(public_key)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(*_RAW)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    key = _content_key(shared, ephemeral_public, recipient)
    return Sealed(_b64(ephemeral_public), vault.seal_direct(plaintext, key, binding=binding))


def open_with(sealed: Sealed, secret: str, *, expected_binding: vault.Binding) -> bytes:
    """Open with the secret that determined the recipient key; SealedRecordError if wrong."""
    private = _private_key(secret)
    recipient = private.public_key().public_bytes(*_RAW)
    ephemeral_public = _unb64(sealed.ephemeral)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
    except ValueError:  # a low-order point gives an all-zero secret (RFC 7748 §6.1)
        raise vault.SealedRecordError("sealed record failed to decrypt") from None
    key = _content_key(shared, ephemeral_public, recipient)
    return vault.open_direct(sealed.record, key, expected_binding=expected_binding)
