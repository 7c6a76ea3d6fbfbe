"""Abuse limits on the unauthenticated and expensive endpoints: passkey ceremonies, key
validation (so the broker is no oracle for testing stolen keys), the token endpoint and the
device flow's code entry (against guessing user codes).

Counted per client IP and, where there is one, per account, with the same limit backend as
the proxy (in-process, or Redis for several instances).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from keybroker.proxy.limits import Decision, Limits, LimitsUnavailable


@dataclass(frozen=True)
class Rule:
    name: str
    per_minute: int


CEREMONY_PER_IP = Rule("ceremony-ip", 60)
KEY_CHECK_PER_ACCOUNT = Rule("keycheck-account", 10)
KEY_CHECK_PER_IP = Rule("keycheck-ip", 20)
TOKEN_PER_IP = Rule("token-ip", 120)
# Device flow user codes (RFC 8628 §5.1): 10 a minute from one address and 5 a minute for
# one code; over a code's 10 minutes one address makes at most 100 guesses at a space of
# 20^8 (tests/oauth/test_device.py does the arithmetic).
USER_CODE_PER_IP = Rule("usercode-ip", 10)
USER_CODE_PER_CODE = Rule("usercode-code", 5)


class TooManyAttempts(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after
        self.message = f"Too many attempts from here. Try again in {retry_after} seconds."


def client_ip(conn: HTTPConnection) -> str:
    # With KEYBROKER_TRUSTED_PROXIES, uvicorn has already put the forwarded address here.
    return conn.client.host if conn.client else "unknown"


async def check(limits: Limits, rule: Rule, subject: str, scale: float = 1.0) -> None:
    """Count one attempt; ``scale`` (KEYBROKER_ABUSE_LIMIT_SCALE) multiplies every limit."""
    per_minute = max(1, int(rule.per_minute * scale))
    try:
        decision: Decision = await limits.hit(f"abuse:{rule.name}:{subject}", per_minute)
    except LimitsUnavailable:
        raise TooManyAttempts(2) from None  # fail closed, as the proxy does
    if not decision.allowed:
        raise TooManyAttempts(decision.retry_after)
