"""Server-side WebAuthn challenges: single use, expiring (W3C WebAuthn §13.4.3)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy import Engine, delete, select
from sqlmodel import Session, col

from keybroker.models import Challenge, utcnow

CHALLENGE_TTL = timedelta(minutes=5)


class ChallengeError(Exception):
    message = "This passkey request is not valid. Start again."


class ChallengeExpiredError(ChallengeError):
    message = "This passkey request expired (they last 5 minutes). Start again."


class ChallengeUsedError(ChallengeError):
    message = "This passkey request was already used or is unknown. Start again."


@dataclass(frozen=True)
class IssuedChallenge:
    id: str
    purpose: str
    challenge: bytes
    subject: str | None


class ChallengeStore(Protocol):
    def issue(self, purpose: str, subject: str | None = None) -> IssuedChallenge: ...

    def consume(self, challenge_id: str, *, expected_purpose: str) -> IssuedChallenge: ...


class DatabaseChallengeStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def issue(self, purpose: str, subject: str | None = None) -> IssuedChallenge:
        row = Challenge(
            purpose=purpose,
            challenge=secrets.token_bytes(32),
            subject=subject,
            expires_at=utcnow() + CHALLENGE_TTL,
        )
        with Session(self.engine) as session:
            # Old rows are swept here rather than by a background job.
            session.execute(
                delete(Challenge).where(col(Challenge.expires_at) < utcnow() - timedelta(hours=1))
            )
            session.add(row)
            session.commit()
            return IssuedChallenge(row.id, row.purpose, row.challenge, row.subject)

    def consume(self, challenge_id: str, *, expected_purpose: str) -> IssuedChallenge:
        with Session(self.engine) as session:
            row = session.execute(
                select(Challenge).where(col(Challenge.id) == challenge_id)
            ).scalar_one_or_none()
            if row is None or row.purpose != expected_purpose:
                raise ChallengeUsedError()
            issued = IssuedChallenge(row.id, row.purpose, row.challenge, row.subject)
            expired = row.expires_at < utcnow()
            # The DELETE's row count decides who used it: two racing requests cannot both win.
            result = session.execute(delete(Challenge).where(col(Challenge.id) == challenge_id))
            session.commit()
            if getattr(result, "rowcount", 0) != 1:
                raise ChallengeUsedError()
            if expired:
                raise ChallengeExpiredError()
            return issued
