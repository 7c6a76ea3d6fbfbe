"""WebAuthn challenges in Redis, for several instances: single use by GETDEL, expiry by TTL."""

from __future__ import annotations

import json
import secrets

from redis import Redis

from keybroker.auth.challenges import (
    CHALLENGE_TTL,
    ChallengeUsedError,
    IssuedChallenge,
)


class RedisChallengeStore:
    def __init__(self, client: Redis, prefix: str = "kb") -> None:
        self.redis = client
        self.prefix = prefix

    def issue(self, purpose: str, subject: str | None = None) -> IssuedChallenge:
        issued = IssuedChallenge(secrets.token_hex(12), purpose, secrets.token_bytes(32), subject)
        record = json.dumps(
            {"purpose": purpose, "challenge": issued.challenge.hex(), "subject": subject}
        )
        self.redis.set(
            f"{self.prefix}:challenge:{issued.id}", record, ex=int(CHALLENGE_TTL.total_seconds())
        )
        return issued

    def consume(self, challenge_id: str, *, expected_purpose: str) -> IssuedChallenge:
        # GETDEL is atomic: of two racing requests only one gets the record (W3C WebAuthn
        # §13.4.3). An expired record is gone, so "expired" and "used" read the same here.
        raw = self.redis.getdel(f"{self.prefix}:challenge:{challenge_id}")
        if raw is None:
            raise ChallengeUsedError()
        record = json.loads(raw)
        if record["purpose"] != expected_purpose:
            raise ChallengeUsedError()
        return IssuedChallenge(
            challenge_id, record["purpose"], bytes.fromhex(record["challenge"]), record["subject"]
        )
