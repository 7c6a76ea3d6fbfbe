"""Device codes (RFC 8628): issue, find by user code, record the owner's decision, poll.

The device code (256 bits) and the user code are stored only as SHA-256 hashes. The user code
is 8 characters from 20 consonants (RFC 8628 §6.1: no vowels, so no words; no digits, so no
0/O or 1/I/L look-alikes), shown as XXXX-XXXX: about 34.6 bits, enough because entry is
limited per IP and per code (web/device_routes.py). A code is single use: once the owner
has allowed or denied, entering it again finds nothing, and its device code redeems once.

The owner's key travels from consent to redemption sealed to a key pair that only the device
code determines (crypto/sealed_box.py), so a database reader opens nothing.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from authlib.oauth2.rfc6749.errors import AccessDeniedError, InvalidGrantError
from authlib.oauth2.rfc8628 import AuthorizationPendingError, ExpiredTokenError, SlowDownError
from sqlalchemy import Engine, delete, update
from sqlmodel import Session, col, select

from keybroker.crypto import sealed_box, vault
from keybroker.grants import Choices
from keybroker.models import DeviceCode, utcnow
from keybroker.oauth.approval import Consent

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
CODE_TTL = timedelta(minutes=10)
INTERVAL = 5  # seconds between polls (RFC 8628 §3.2)
SLOW_DOWN_STEP = 5  # "increased by 5 seconds for this and all subsequent requests" (§3.5)
KEEP_EXPIRED = timedelta(hours=1)  # expired rows still answer expired_token for a while
DEVICE_USE = "device-code"
HINTS = ("models", "budget", "rpm", "expires_in_days")  # as at /authorize


def new_user_code() -> str:
    chars = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
    return f"{chars[:4]}-{chars[4:]}"


def normalize_user_code(text: str) -> str | None:
    """What the owner typed, as the 8 code characters: case, dashes and spaces are ignored
    (RFC 8628 §6.1); None if it cannot be a code at all."""
    chars = "".join(c for c in text.upper() if c not in "- \t")
    if len(chars) != USER_CODE_LENGTH or not set(chars) <= set(USER_CODE_ALPHABET):
        return None
    return chars


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def user_code_hash(normalized: str) -> str:
    return _hash("user code " + normalized)


@dataclass(frozen=True)
class Issued:
    request_id: str
    device_code: str = field(repr=False)
    user_code: str = field(repr=False)


def issue(engine: Engine, *, client_id: str, scope: str, hints: dict[str, str]) -> Issued:
    device_code = secrets.token_urlsafe(32)
    user_code = new_user_code()
    now = utcnow()
    request_id = secrets.token_urlsafe(16)
    row = DeviceCode(
        id=request_id,
        device_code_hash=_hash(device_code),
        user_code_hash=user_code_hash(user_code.replace("-", "")),
        client_id=client_id,
        scope=scope,
        hints=json.dumps({k: v[:200] for k, v in hints.items() if k in HINTS}),
        public_key=sealed_box.public_key_for(device_code),
        interval=INTERVAL,
        next_poll_at=now,
        expires_at=now + CODE_TTL,
    )
    with Session(engine) as db:
        db.execute(delete(DeviceCode).where(col(DeviceCode.expires_at) < now - KEEP_EXPIRED))
        db.add(row)
        db.commit()
    return Issued(request_id, device_code, user_code)


@dataclass(frozen=True)
class PendingRequest:
    """A device's request as its consent screen shows it."""

    id: str
    client_id: str
    scope: str
    hints: dict[str, str]


def _pending(row: DeviceCode | None) -> PendingRequest | None:
    if row is None or row.status != "pending" or row.expires_at <= utcnow():
        return None
    return PendingRequest(row.id, row.client_id, row.scope, json.loads(row.hints))


def find_by_user_code(engine: Engine, normalized: str) -> PendingRequest | None:
    with Session(engine) as db:
        row = db.exec(
            select(DeviceCode).where(col(DeviceCode.user_code_hash) == user_code_hash(normalized))
        ).first()
    return _pending(row)


def get_pending(engine: Engine, request_id: str) -> PendingRequest | None:
    if len(request_id) > 32:
        return None
    with Session(engine) as db:
        return _pending(db.get(DeviceCode, request_id))


def decide(
    engine: Engine, request_id: str, user_id: str, choices: Choices | None, provider_key: str = ""
) -> bool:
    """Record the owner's Allow (``choices`` and their key) or Deny (None); False if the
    request was already decided or has expired. The first decision wins (one UPDATE)."""
    with Session(engine) as db:
        row = db.get(DeviceCode, request_id)
        if row is None:
            return False
        values: dict[str, object] = {"status": "denied", "user_id": user_id}
        if choices is not None:
            sealed = sealed_box.seal_to(
                provider_key.encode(), row.public_key, binding=vault.Binding(row.id, DEVICE_USE)
            )
            values = {
                "status": "allowed",
                "user_id": user_id,
                "choices": choices.to_json(),
                "scope": " ".join(choices.scopes),  # narrowed scopes are granted (RFC 6749 §3.3)
                "consent_key": sealed.ephemeral,
                "sealed_key": sealed.record,
            }
        claimed = db.execute(
            update(DeviceCode)
            .where(
                col(DeviceCode.id) == request_id,
                col(DeviceCode.status) == "pending",
                col(DeviceCode.expires_at) > utcnow(),
            )
            .values(**values)
        )
        db.commit()
        return getattr(claimed, "rowcount", 0) == 1


@dataclass(frozen=True)
class DeviceCredential:
    """authlib's DeviceCredentialMixin over a stored row and the presented device code."""

    device_code: str = field(repr=False)
    row: DeviceCode

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_scope(self) -> str:
        return self.row.scope

    def get_user_code(self) -> str:
        return self.row.user_code_hash

    def is_expired(self) -> bool:
        return self.row.expires_at <= utcnow()


def find_by_device_code(engine: Engine, device_code: str) -> DeviceCredential | None:
    if len(device_code) > 128:
        return None
    with Session(engine) as db:
        row = db.exec(
            select(DeviceCode).where(col(DeviceCode.device_code_hash) == _hash(device_code))
        ).first()
    return None if row is None else DeviceCredential(device_code, row)


def poll(engine: Engine, credential: DeviceCredential) -> Consent:
    """One poll at the token endpoint: the owner's consent, or the RFC 8628 §3.5 error."""
    row = credential.row
    now = utcnow()
    with Session(engine) as db:
        if credential.is_expired():
            db.execute(
                update(DeviceCode)
                .where(col(DeviceCode.id) == row.id)
                .values(sealed_key=None, consent_key=None)
            )
            db.commit()
            raise ExpiredTokenError("The device code has expired. Start again.")
        if row.status == "denied":
            raise AccessDeniedError("The owner denied access.")
        if row.status == "allowed":
            # The UPDATE's row count decides who redeems: two racing polls cannot both.
            claimed = db.execute(
                update(DeviceCode)
                .where(col(DeviceCode.id) == row.id, col(DeviceCode.status) == "allowed")
                .values(status="used", sealed_key=None, consent_key=None)
            )
            db.commit()
            if getattr(claimed, "rowcount", 0) == 1:
                return _consent(credential)
        if row.status != "pending":
            raise InvalidGrantError("This device code has already been used.")
        # On time if the previous poll was at least ``interval`` ago, decided in one UPDATE.
        on_time = db.execute(
            update(DeviceCode)
            .where(
                col(DeviceCode.id) == row.id,
                col(DeviceCode.status) == "pending",
                col(DeviceCode.next_poll_at) <= now,
            )
            .values(next_poll_at=now + timedelta(seconds=row.interval))
        )
        if getattr(on_time, "rowcount", 0) == 1:
            db.commit()
            raise AuthorizationPendingError("The owner has not decided yet.")
        slower = row.interval + SLOW_DOWN_STEP
        db.execute(
            update(DeviceCode)
            .where(col(DeviceCode.id) == row.id)
            .values(interval=slower, next_poll_at=now + timedelta(seconds=slower))
        )
        db.commit()
        raise SlowDownError(f"Polling too fast: wait {slower} seconds between requests.")


def _consent(credential: DeviceCredential) -> Consent:
    row = credential.row
    assert row.user_id is not None
    assert row.choices is not None
    assert row.consent_key is not None
    assert row.sealed_key is not None
    key = sealed_box.open_with(
        sealed_box.Sealed(row.consent_key, row.sealed_key),
        credential.device_code,
        expected_binding=vault.Binding(row.id, DEVICE_USE),
    )
    return Consent(row.user_id, Choices.from_json(row.choices), key.decode())


def record_grant(engine: Engine, request_id: str, grant_id: str) -> None:
    with Session(engine) as db:
        db.execute(
            update(DeviceCode).where(col(DeviceCode.id) == request_id).values(grant_id=grant_id)
        )
        db.commit()
