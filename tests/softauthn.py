"""A software passkey authenticator (ES256, 'none' attestation) for API-level tests.

It builds the same JSON a browser's ``credential.toJSON()`` sends, and lets a test bend
any part of it: origin, rpId, flags, challenge, sign count, user handle.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftAuthenticator:
    origin: str = "http://localhost:8000"
    rp_id: str = "localhost"
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    credential_id: bytes = field(default_factory=lambda: os.urandom(16))
    sign_count: int = 0
    user_handle: bytes | None = None
    prf_secret: bytes | None = None  # set: the authenticator supports PRF (hmac-secret)

    def _prf(self, salt_b64: str) -> str:
        import hmac

        assert self.prf_secret is not None
        return b64u(hmac.new(self.prf_secret, unb64u(salt_b64), hashlib.sha256).digest())

    def _prf_results(self, extensions: dict[str, Any] | None, create: bool) -> dict[str, Any]:
        prf = (extensions or {}).get("prf")
        if prf is None:
            return {}
        if self.prf_secret is None:
            return {"prf": {"enabled": False}} if create else {"prf": {}}
        salt = (prf.get("eval") or {}).get("first")
        by_credential = prf.get("evalByCredential") or {}
        salt = (by_credential.get(self.credential_id_b64) or {}).get("first", salt)
        out: dict[str, Any] = {"enabled": True} if create else {}
        if salt:
            out["results"] = {"first": self._prf(salt)}
        return {"prf": out}

    @property
    def credential_id_b64(self) -> str:
        return b64u(self.credential_id)

    def _cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,
                3: -7,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps(
            {
                "type": kind,
                "challenge": challenge,
                "origin": origin or self.origin,
                "crossOrigin": False,
            }
        ).encode()

    def create(
        self,
        options: dict[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        flags: int = UP | UV,
    ) -> dict[str, Any]:
        self.user_handle = unb64u(options["user"]["id"])
        rp_hash = hashlib.sha256((rp_id or options["rp"]["id"]).encode()).digest()
        attested = (
            b"\x00" * 16
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + self._cose_key()
        )
        auth_data = rp_hash + bytes([flags | AT]) + struct.pack(">I", self.sign_count) + attested
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        return {
            "id": b64u(self.credential_id),
            "rawId": b64u(self.credential_id),
            "type": "public-key",
            "clientExtensionResults": self._prf_results(options.get("extensions"), True),
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64u(client_data),
                "attestationObject": b64u(attestation),
                "transports": ["internal"],
            },
        }

    def get(
        self,
        options: dict[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        flags: int = UP | UV,
        user_handle: bytes | None = None,
        sign_count: int | None = None,
    ) -> dict[str, Any]:
        self.sign_count = self.sign_count + 1 if sign_count is None else sign_count
        rp_hash = hashlib.sha256((rp_id or options["rpId"]).encode()).digest()
        auth_data = rp_hash + bytes([flags]) + struct.pack(">I", self.sign_count)
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        signature = self.key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        handle = user_handle if user_handle is not None else self.user_handle
        return {
            "id": b64u(self.credential_id),
            "rawId": b64u(self.credential_id),
            "type": "public-key",
            "clientExtensionResults": self._prf_results(options.get("extensions"), False),
            "response": {
                "clientDataJSON": b64u(client_data),
                "authenticatorData": b64u(auth_data),
                "signature": b64u(signature),
                "userHandle": b64u(handle) if handle else None,
            },
        }
