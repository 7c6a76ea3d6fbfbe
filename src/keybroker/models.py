"""Database tables. Times are timezone-aware UTC (SQLModel's ``UTCDateTime``)."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return secrets.token_hex(12)


def _user_fk() -> Column[str]:
    # ON DELETE CASCADE: deleting an account removes every row that belongs to it.
    return Column(
        String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )


class User(SQLModel, table=True):
    __tablename__ = "users"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    # WebAuthn user handle (W3C WebAuthn §5.4.3): random, never personal data.
    webauthn_handle: str = Field(unique=True, max_length=128)
    name: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class Passkey(SQLModel, table=True):
    __tablename__ = "passkeys"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    user_id: str = Field(sa_column=_user_fk())
    credential_id: str = Field(unique=True, max_length=1400)
    public_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    sign_count: int = 0
    transports: str = Field(default="[]", max_length=200)
    aaguid: str = Field(default="", max_length=64)
    device_type: str = Field(max_length=32)
    backed_up: bool = False
    prf_supported: bool = False
    name: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None


class BrowserSession(SQLModel, table=True):
    __tablename__ = "sessions"
    # SHA-256 of the random token in the cookie: a database reader cannot ride a session.
    id: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(sa_column=_user_fk())
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    # Time of the last user-verified passkey assertion, for actions that need a fresh one.
    verified_at: datetime = Field(default_factory=utcnow)


class Challenge(SQLModel, table=True):
    __tablename__ = "challenges"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    purpose: str = Field(max_length=32)
    challenge: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # The new account's user handle (registration) or the signed-in user's id (add passkey).
    subject: str | None = Field(default=None, max_length=128)
    expires_at: datetime = Field(index=True)


class VaultEntry(SQLModel, table=True):
    __tablename__ = "vault_entries"
    __table_args__ = (UniqueConstraint("user_id", "provider"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    user_id: str = Field(sa_column=_user_fk())
    provider: str = Field(default="openai", max_length=32)
    # Format 1: ``sealed`` is the key under a master key. Format 2 (key slots): ``content`` is
    # the key under a random content key, and ``sealed`` is the master slot (that content key
    # under a master key), NULL in strict custody where only passkey slots can open it.
    format: int = Field(default=2)
    content: str | None = Field(default=None, max_length=4000)
    sealed: str | None = Field(default=None, max_length=4000)
    kid: str | None = Field(default=None, max_length=32, index=True)
    strict: bool = False
    hint: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"
    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(sa_column=_user_fk())
    at: datetime = Field(default_factory=utcnow, index=True)
    action: str = Field(max_length=64)
    detail: str = Field(default="", max_length=500)


class RegisteredClient(SQLModel, table=True):
    """A desktop, CLI or server app registered with ``keybroker clients add``."""

    __tablename__ = "clients"
    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    redirect_uris: str = Field(max_length=4000)  # JSON list
    # May use the device authorization grant (RFC 8628), with or without redirect URIs.
    device: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class AuthorizationCode(SQLModel, table=True):
    __tablename__ = "authorization_codes"
    # SHA-256 of the code: the code itself is never stored (a reader cannot redeem it).
    id: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(sa_column=_user_fk())
    client_id: str = Field(max_length=300)
    redirect_uri: str | None = Field(default=None, max_length=2000)
    code_challenge: str = Field(max_length=128)
    scope: str = Field(max_length=500)
    choices: str = Field(max_length=4000)  # JSON: models, budget, rate, expiry
    # The provider key sealed under a key derived from the code, until it is redeemed.
    sealed_key: str | None = Field(default=None, max_length=4000)
    expires_at: datetime
    used_at: datetime | None = None
    grant_id: str | None = Field(default=None, max_length=32)


class DeviceCode(SQLModel, table=True):
    """One device authorization request (RFC 8628 §3.1), from issue to redemption."""

    __tablename__ = "device_codes"
    # Random, shown to the owner's browser after a correct user code (never the codes).
    id: str = Field(primary_key=True, max_length=32)
    # SHA-256 of the device code and of the normalised user code: neither is stored.
    device_code_hash: str = Field(unique=True, max_length=64)
    user_code_hash: str = Field(unique=True, max_length=64)
    client_id: str = Field(max_length=300)
    scope: str = Field(max_length=500)
    hints: str = Field(default="{}", max_length=2000)  # JSON: models, budget, rpm, expiry
    # X25519 public key derived from the device code: consent seals the owner's key to it.
    public_key: str = Field(max_length=64)
    status: str = Field(default="pending", max_length=16)  # pending allowed denied used
    interval: int = 5
    next_poll_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)
    user_id: str | None = Field(
        default=None,
        sa_column=Column(String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    )
    choices: str | None = Field(default=None, max_length=4000)
    # The consent's ephemeral X25519 public key and the provider key sealed with it.
    consent_key: str | None = Field(default=None, max_length=64)
    sealed_key: str | None = Field(default=None, max_length=4000)
    grant_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow)


class Grant(SQLModel, table=True):
    __tablename__ = "grants"
    id: str = Field(primary_key=True, max_length=32)
    user_id: str = Field(sa_column=_user_fk())
    client_id: str = Field(max_length=300, index=True)
    client_name: str = Field(max_length=300)
    web_origin: str | None = Field(default=None, max_length=300)
    scopes: str = Field(max_length=500)
    models: str = Field(default="[]", max_length=4000)  # JSON list; empty means any model
    # Micro-USD: up to $10,000 needs 64 bits (PostgreSQL INTEGER stops at 2^31).
    budget_microusd: int = Field(sa_column=Column(BigInteger, nullable=False))
    rpm: int
    expires_at: datetime
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    secret_hash: str = Field(max_length=64)
    # The grant copy of the provider key (DESIGN.md, Key custody); NULL once revoked.
    sealed_copy: str | None = Field(default=None, max_length=8000)
    kid: str | None = Field(default=None, max_length=32, index=True)
    revoked_at: datetime | None = None


class UsageRecord(SQLModel, table=True):
    """One proxied request: what it cost, never what it said.

    Kept for ``KEYBROKER_USAGE_RETENTION_DAYS``; its totals live on in ``UsageDay``.
    """

    __tablename__ = "usage"
    # The request log pages a grant's rows by keyset (grant_id, id < before), newest first:
    # SQLite's index on grant_id holds the rowid (id) already; PostgreSQL gets an index on
    # (grant_id, id) from migration 0008.
    id: int | None = Field(default=None, primary_key=True)
    grant_id: str = Field(
        sa_column=Column(
            String(32), ForeignKey("grants.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    user_id: str = Field(sa_column=_user_fk())
    at: datetime = Field(default_factory=utcnow, index=True)
    method: str = Field(max_length=10)
    path: str = Field(max_length=300)
    model: str = Field(default="", max_length=100)
    status: int
    input_tokens: int = 0
    output_tokens: int = 0
    cost_microusd: int = 0
    latency_ms: int = 0
    unknown_model: bool = False
    interrupted: bool = False


class OwnedObject(SQLModel, table=True):
    """An OpenAI object a grant made through the proxy (proxy/ownership.py): only that grant
    may name it, list it or delete it."""

    __tablename__ = "owned_objects"
    grant_id: str = Field(
        sa_column=Column(String(32), ForeignKey("grants.id", ondelete="CASCADE"), primary_key=True)
    )
    object_id: str = Field(primary_key=True, max_length=200)
    kind: str = Field(max_length=40)
    created_at: datetime = Field(default_factory=utcnow)


def _big() -> Column[int]:
    return Column(BigInteger, nullable=False, default=0)


class UsageDay(SQLModel, table=True):
    """One grant's usage on one UTC day, added to as its rows are written (keybroker.rollups)."""

    __tablename__ = "usage_days"
    __table_args__ = (Index("ix_usage_days_user_id_day", "user_id", "day"),)
    grant_id: str = Field(
        sa_column=Column(String(32), ForeignKey("grants.id", ondelete="CASCADE"), primary_key=True)
    )
    day: date = Field(sa_column=Column(Date, primary_key=True))
    user_id: str = Field(
        sa_column=Column(String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    )
    # 64 bits: a busy grant's tokens over a day can pass 2^31.
    requests: int = Field(default=0, sa_column=_big())
    input_tokens: int = Field(default=0, sa_column=_big())
    output_tokens: int = Field(default=0, sa_column=_big())
    cost_microusd: int = Field(default=0, sa_column=_big())


class KeySlot(SQLModel, table=True):
    """The vault's content key wrapped by a key derived from one passkey's PRF output."""

    __tablename__ = "key_slots"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    user_id: str = Field(sa_column=_user_fk())
    passkey_id: str = Field(
        sa_column=Column(
            String(32), ForeignKey("passkeys.id", ondelete="CASCADE"), nullable=False, unique=True
        )
    )
    wrapped: str = Field(max_length=2000)
    created_at: datetime = Field(default_factory=utcnow)
