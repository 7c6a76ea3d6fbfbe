"""Abuse limits on the unauthenticated and expensive endpoints: passkey ceremonies, key
validation (so the broker is no oracle for testing stolen keys), the token endpoint and the
device flow's code entry (against guessing user codes).

Counted per client network (an IPv4 address, an IPv6 /64) and, where there is one, per
account, with the same limit backend as the proxy (in-process, or Redis for several instances).
"""

from __future__ import annotations

import ipaddress
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
# Device flow user codes (RFC 8628 §5.1): 10 a minute from one network and 5 a minute for
# one code. Networks are cheap to come by (an IPv6 /48 holds 65,536 /64s), so code entry by
# visitors who are not signed in also shares one budget of 100 a minute across all networks:
# over a code's 10 minutes at most 1,000 guesses at a space of 20^8 however many addresses
# guess (tests/oauth/test_device.py does the arithmetic). Flooding that budget stops only
# anonymous entry, for at most a minute at a time: a signed-in owner's entries are counted
# per account instead (SECURITY.md, "Device flow").
USER_CODE_PER_IP = Rule("usercode-ip", 10)
USER_CODE_PER_CODE = Rule("usercode-code", 5)
USER_CODE_ANONYMOUS = Rule("usercode-anonymous", 100)
USER_CODE_PER_ACCOUNT = Rule("usercode-account", 10)


class TooManyAttempts(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after
        self.message = f"Too many attempts from here. Try again in {retry_after} seconds."


def client_ip(conn: HTTPConnection) -> str:
    """The client's network as limits count it: an IPv4 address, or an IPv6 address's /64
    (one host is usually given a whole /64, RFC 6177 §2), an IPv4-mapped IPv6 address as its
    IPv4 address. Counting exact IPv6 addresses would give each host 2^64 budgets."""
    # With KEYBROKER_TRUSTED_PROXIES, uvicorn has already put the forwarded address here.
    return network_of(conn.client.host) if conn.client else "unknown"


def network_of(host: str) -> str:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # without an IPv6 zone id
    except ValueError:
        return host  # not an address (a test client's name, a Unix socket)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


async def check(limits: Limits, rule: Rule, subject: str, scale: float = 1.0) -> None:
    """Count one attempt; ``scale`` (KEYBROKER_ABUSE_LIMIT_SCALE) multiplies every limit."""
    per_minute = max(1, int(rule.per_minute * scale))
    try:
        decision: Decision = await limits.hit(f"abuse:{rule.name}:{subject}", per_minute)
    except LimitsUnavailable:
        raise TooManyAttempts(2) from None  # fail closed, as the proxy does
    if not decision.allowed:
        raise TooManyAttempts(decision.retry_after)
