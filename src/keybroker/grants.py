"""Grants: what an app may do with the owner's key, and the sealed copy that lets it.

A grant is created when an app redeems its authorization code. Revoking it deletes the grant
copy, so its token can never work again, whatever a cache or a database restore says.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, select, update
from sqlmodel import Session, col

from keybroker.auth.accounts import audit
from keybroker.crypto import tokens
from keybroker.crypto.keyring import KeyRing
from keybroker.events import GRANT_CHANGES
from keybroker.models import Grant, utcnow
from keybroker.oauth.clients import SCOPES

MAX_BUDGET_USD = 10_000
MAX_RPM = 10_000
MAX_DAYS = 365
MODEL_RE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:/")


class ChoiceError(ValueError):
    pass


@dataclass(frozen=True)
class Choices:
    """What the owner allowed on the consent screen (or what the app suggested)."""

    scopes: tuple[str, ...]
    models: tuple[str, ...] = ()  # empty: any model
    budget_usd: float = 5.0
    rpm: int = 60
    days: int = 30

    def to_json(self) -> str:
        return json.dumps(
            {
                "scopes": self.scopes,
                "models": self.models,
                "budget_usd": self.budget_usd,
                "rpm": self.rpm,
                "days": self.days,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Choices:
        data = json.loads(text)
        return cls(
            tuple(data["scopes"]),
            tuple(data["models"]),
            float(data["budget_usd"]),
            int(data["rpm"]),
            int(data["days"]),
        )


def parse_models(text: str) -> tuple[str, ...]:
    models = [m.strip() for m in text.replace(",", " ").split() if m.strip()]
    for model in models:
        if len(model) > 100 or not set(model) <= MODEL_RE_CHARS:
            raise ChoiceError(f"{model[:40]!r} is not a model name")
    return tuple(dict.fromkeys(models))[:50]


def _number(value: str, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ChoiceError(f"{name} must be a number") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise ChoiceError(f"{name} must be between {low:g} and {high:g}")
    return number


def choices_from_form(fields: dict[str, str], scopes: list[str]) -> Choices:
    picked = tuple(s for s in scopes if s in SCOPES)
    if not picked:
        raise ChoiceError("Choose at least one kind of access.")
    return Choices(
        scopes=picked,
        models=parse_models(fields.get("models", "")),
        budget_usd=round(
            _number(fields.get("budget_usd", ""), "Monthly budget", 0, MAX_BUDGET_USD), 2
        ),
        rpm=int(_number(fields.get("rpm", ""), "Requests per minute", 1, MAX_RPM)),
        days=int(_number(fields.get("days", ""), "Expiry in days", 1, MAX_DAYS)),
    )


@dataclass(frozen=True)
class GrantView:
    """A grant as the proxy and the settings page see it (no secret material)."""

    id: str
    user_id: str
    client_id: str
    client_name: str
    web_origin: str | None
    scopes: frozenset[str]
    models: tuple[str, ...]
    budget_microusd: int
    rpm: int
    expires_at: datetime
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool
    secret_hash: str = field(repr=False)
    sealed_copy: str | None = field(repr=False)

    @classmethod
    def of(cls, row: Grant) -> GrantView:
        return cls(
            row.id,
            row.user_id,
            row.client_id,
            row.client_name,
            row.web_origin,
            frozenset(row.scopes.split()),
            tuple(json.loads(row.models)),
            row.budget_microusd,
            row.rpm,
            row.expires_at,
            row.created_at,
            row.last_used_at,
            row.revoked_at is not None or row.sealed_copy is None,
            row.secret_hash,
            row.sealed_copy,
        )

    @property
    def live(self) -> bool:
        return not self.revoked and self.expires_at > utcnow()


def create_grant(
    engine: Engine,
    ring: KeyRing,
    *,
    token: tokens.AppToken,
    user_id: str,
    client_id: str,
    client_name: str,
    web_origin: str | None,
    choices: Choices,
    provider_key: str,
) -> GrantView:
    row = Grant(
        id=token.grant_id,
        user_id=user_id,
        client_id=client_id,
        client_name=client_name,
        web_origin=web_origin,
        scopes=" ".join(choices.scopes),
        models=json.dumps(choices.models),
        budget_microusd=round(choices.budget_usd * 1_000_000),
        rpm=choices.rpm,
        expires_at=utcnow() + timedelta(days=choices.days),
        secret_hash=token.secret_hash,
        sealed_copy=tokens.seal_grant_copy(provider_key, token, ring),
        kid=ring.active_kid,
    )
    with Session(engine, expire_on_commit=False) as db:
        db.add(row)
        audit(db, user_id, "grant.created", f"{client_name} ({' '.join(choices.scopes)})")
        db.commit()
    return GrantView.of(row)


def get_grant(engine: Engine, grant_id: str) -> GrantView | None:
    with Session(engine) as db:
        row = db.get(Grant, grant_id)
        return None if row is None else GrantView.of(row)


def revoke(engine: Engine, grant_id: str, *, reason: str = "grant.revoked") -> bool:
    """End a grant for good: its grant copy is deleted. True if it was live."""
    with Session(engine) as db:
        row = db.get(Grant, grant_id)
        if row is None or row.sealed_copy is None:
            return False
        user_id, name = row.user_id, row.client_name
        db.execute(
            update(Grant)
            .where(col(Grant.id) == grant_id)
            .values(sealed_copy=None, kid=None, revoked_at=utcnow())
        )
        audit(db, user_id, reason, name)
        db.commit()
    GRANT_CHANGES.publish(grant_id)
    return True


def revoke_all_of(engine: Engine, user_id: str, *, reason: str) -> list[str]:
    with Session(engine) as db:
        ids = list(
            db.execute(
                select(col(Grant.id)).where(
                    col(Grant.user_id) == user_id, col(Grant.sealed_copy).is_not(None)
                )
            ).scalars()
        )
    for grant_id in ids:
        revoke(engine, grant_id, reason=reason)
    return ids


def grants_of(engine: Engine, user_id: str) -> list[GrantView]:
    with Session(engine) as db:
        rows = db.execute(
            select(Grant)
            .where(col(Grant.user_id) == user_id)
            .order_by(col(Grant.created_at).desc())
        ).scalars()
        return [GrantView.of(r) for r in rows]


class GrantNotFoundError(LookupError):
    pass


def owned(engine: Engine, grant_id: str, user_id: str) -> GrantView:
    grant = get_grant(engine, grant_id)
    if grant is None or grant.user_id != user_id:
        raise GrantNotFoundError(grant_id)
    return grant


def update_limits(engine: Engine, grant_id: str, user_id: str, choices: Choices) -> None:
    """New limits, effective on the grant's next request (the caches drop it at once)."""
    with Session(engine) as db:
        row = db.get(Grant, grant_id)
        if row is None or row.user_id != user_id:
            raise GrantNotFoundError(grant_id)
        row.budget_microusd = round(choices.budget_usd * 1_000_000)
        row.rpm = choices.rpm
        row.expires_at = utcnow() + timedelta(days=choices.days)
        row.models = json.dumps(choices.models)
        db.add(row)
        audit(
            db,
            user_id,
            "grant.changed",
            f"{row.client_name}: ${choices.budget_usd:.2f}/month, {choices.rpm}/min, "
            f"{choices.days} days, models {', '.join(choices.models) or 'any'}",
        )
        db.commit()
    GRANT_CHANGES.publish(grant_id)
