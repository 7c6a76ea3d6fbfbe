"""The device authorization grant (RFC 8628) through the real app, at the HTTP level."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import update
from sqlmodel import Session, select
from starlette.testclient import TestClient

from keybroker.app import create_app
from keybroker.context import get_context
from keybroker.crypto import sealed_box, tokens, vault
from keybroker.grants import get_grant
from keybroker.models import DeviceCode, utcnow
from keybroker.oauth import device_codes
from keybroker.oauth.clients import DEVICE_CODE_GRANT_TYPE, register_client
from keybroker.settings import Settings
from tests.helpers import (
    DEFAULT_CHOICES,
    GOOD_KEY,
    SAME_ORIGIN,
    authorize_query,
    pkce,
    post,
    register,
    save_key,
)
from tests.live import Live
from tests.softauthn import SoftAuthenticator

BROKER = "http://localhost:8000"
USER_CODE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")


@pytest.fixture
def device_app(client: TestClient) -> str:
    return register_client(
        get_context(client).engine, name="Terminal Tool", redirect_uris=[], device=True
    )


def start(client: TestClient, client_id: str, **extra: str) -> httpx.Response:
    return client.post(
        "/oauth/device_authorization",
        data={"client_id": client_id, "scope": "chat models", **extra},
    )


def poll(client: TestClient, client_id: str, device_code: str) -> httpx.Response:
    return client.post(
        "/oauth/token",
        data={
            "grant_type": DEVICE_CODE_GRANT_TYPE,
            "device_code": device_code,
            "client_id": client_id,
        },
    )


def enter(client: TestClient, user_code: str, **headers: str) -> httpx.Response:
    return client.post(
        "/device",
        data={"user_code": user_code},
        headers={**SAME_ORIGIN, **headers},
        follow_redirects=False,
    )


def decide(
    client: TestClient, authn: SoftAuthenticator | None, request_id: str, decision: str = "allow"
) -> httpx.Response:
    body: dict[str, Any] = {"query": request_id, "decision": decision}
    if decision == "allow":
        assert authn is not None
        options = post(client, "/device/confirm/options")
        if options.status_code != 200:
            return options
        begun = options.json()
        body.update(
            choices=DEFAULT_CHOICES,
            ceremony=begun["ceremony"],
            credential=authn.get(begun["publicKey"]),
        )
    return post(client, "/device/decision", body)


def request_id_for(client: TestClient, user_code: str) -> str:
    """Enter the code in this client's browser; the request id from its consent screen."""
    entered = enter(client, user_code)
    assert entered.status_code == 303, entered.text
    # Neither the code nor the request id travels in a URL (access log, history).
    assert entered.headers["location"] == "/device/request"
    return consent_query(client.get("/device/request"))


def consent_query(page: httpx.Response) -> str:
    found = re.search(r'data-query="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


def poll_now(client: TestClient) -> None:
    """Let the next poll be on time (instead of waiting out the interval)."""
    with Session(get_context(client).engine) as db:
        db.execute(update(DeviceCode).values(next_poll_at=utcnow() - timedelta(seconds=1)))
        db.commit()


def test_metadata_advertises_the_device_flow(client: TestClient) -> None:
    data = client.get("/.well-known/oauth-authorization-server").json()
    assert data["device_authorization_endpoint"] == f"{BROKER}/oauth/device_authorization"
    assert DEVICE_CODE_GRANT_TYPE in data["grant_types_supported"]
    assert "authorization_code" in data["grant_types_supported"]


def test_device_authorization_response(client: TestClient, device_app: str) -> None:
    response = start(client, device_app)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert set(data) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    assert USER_CODE.match(data["user_code"])
    assert len(data["device_code"]) >= 43
    assert data["verification_uri"] == f"{BROKER}/device"
    assert data["verification_uri_complete"] == f"{BROKER}/device?user_code={data['user_code']}"
    assert data["expires_in"] == 600
    assert data["interval"] == 5
    # Neither code is stored, only hashes.
    with Session(get_context(client).engine) as db:
        row = db.exec(select(DeviceCode)).one()
    stored = " ".join(str(v) for v in row.model_dump().values())
    assert data["device_code"] not in stored
    assert data["user_code"] not in stored
    assert data["user_code"].replace("-", "") not in stored


def test_only_device_clients_may_start(client: TestClient, device_app: str) -> None:
    engine = get_context(client).engine
    redirect_only = register_client(engine, name="Loopback", redirect_uris=["http://127.0.0.1/cb"])
    refused = start(client, redirect_only)
    assert refused.status_code == 400
    assert refused.json()["error"] == "unauthorized_client"
    assert start(client, "http://127.0.0.1:5555").json()["error"] == "unauthorized_client"
    assert start(client, "kbc_nobody").json()["error"] == "invalid_client"
    assert start(client, device_app, scope="chat root").json()["error"] == "invalid_scope"
    # A device-only client cannot use the authorization-code flow.
    _, challenge = pkce()
    page = client.get(
        "/authorize?" + authorize_query(device_app, challenge, redirect_uri="http://127.0.0.1/cb")
    )
    assert page.status_code == 400
    # And a redirect-only client cannot redeem a device code (even a real one).
    data = start(client, device_app).json()
    assert poll(client, redirect_only, data["device_code"]).json()["error"] in (
        "unauthorized_client",
        "invalid_client",
    )


def test_both_kinds_on_one_client(client: TestClient, owner: SoftAuthenticator) -> None:
    both = register_client(
        get_context(client).engine,
        name="Both",
        redirect_uris=["http://127.0.0.1/callback"],
        device=True,
    )
    assert start(client, both).status_code == 200
    _, challenge = pkce()
    query = authorize_query(both, challenge, redirect_uri="http://127.0.0.1:4444/callback")
    assert client.get(f"/authorize?{query}").status_code == 200


def test_the_rfc_answers_in_order(
    client: TestClient, owner: SoftAuthenticator, device_app: str
) -> None:
    data = start(client, device_app, models="gpt-4o-mini", budget="3").json()
    device_code, user_code = data["device_code"], data["user_code"]
    pending = poll(client, device_app, device_code)
    assert pending.status_code == 400
    assert pending.json()["error"] == "authorization_pending"
    # Polling faster than the interval: slow_down, and the interval grows by 5 s each time.
    assert poll(client, device_app, device_code).json()["error"] == "slow_down"
    assert poll(client, device_app, device_code).json()["error"] == "slow_down"
    with Session(get_context(client).engine) as db:
        assert db.exec(select(DeviceCode)).one().interval == 15
    poll_now(client)
    assert poll(client, device_app, device_code).json()["error"] == "authorization_pending"

    # The owner: the device page, the code (typed loosely), the consent screen.
    link = client.get(f"/device?user_code={user_code}", follow_redirects=False)
    assert link.status_code == 303
    assert link.headers["location"] == "/device"  # the code leaves the URL
    page = client.get("/device")
    assert "Code shown by the app" in page.text
    assert "Continue" in page.text
    assert f'value="{user_code}"' in page.text  # filled in, but the owner still continues
    request_id = request_id_for(client, user_code.lower().replace("-", " "))
    consent = client.get("/device/request")
    assert consent.status_code == 200
    assert "A device is asking" in consent.text
    # The code to compare with the device's (RFC 8628 §5.4).
    assert f'id="kb-device-code">{user_code}<' in consent.text
    assert "Terminal Tool" in consent.text
    assert 'data-action="/device/decision"' in consent.text
    assert 'value="gpt-4o-mini"' in consent.text
    assert 'value="3.00"' in consent.text
    allowed = decide(client, owner, request_id)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["mode"] == "device"

    token = poll(client, device_app, device_code)
    assert token.status_code == 200, token.text
    assert token.headers["cache-control"] == "no-store"
    body = token.json()
    assert body["token_type"] == "Bearer"
    assert body["base_url"] == f"{BROKER}/v1"
    assert body["scope"] == "chat models"
    assert body["expires_in"] == 30 * 86400
    grant = get_grant(get_context(client).engine, tokens.parse_token(body["access_token"]).grant_id)
    assert grant is not None
    assert grant.live
    assert grant.client_id == device_app
    assert grant.client_name == "Terminal Tool"
    info = client.get("/api/grant", headers={"authorization": f"Bearer {body['access_token']}"})
    assert info.status_code == 200

    # Single use: the device code redeems once, the user code is spent.
    again = poll(client, device_app, device_code)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert enter(client, user_code).status_code == 400
    gone = client.get("/device/request", follow_redirects=False)
    assert (gone.status_code, gone.headers["location"]) == (303, "/device")
    with Session(get_context(client).engine) as db:
        row = db.exec(select(DeviceCode)).one()
    assert row.sealed_key is None
    assert row.grant_id == grant.id


def test_deny_is_access_denied(
    client: TestClient, owner: SoftAuthenticator, device_app: str
) -> None:
    data = start(client, device_app).json()
    request_id = request_id_for(client, data["user_code"])
    denied = decide(client, None, request_id, "deny")
    assert denied.status_code == 200
    assert denied.json()["mode"] == "device"
    for _ in range(2):
        answer = poll(client, device_app, data["device_code"])
        assert answer.status_code == 400
        assert answer.json()["error"] == "access_denied"
    # Decided once: neither a later Allow nor the code itself works any more.
    assert decide(client, owner, request_id).status_code == 409
    assert enter(client, data["user_code"]).status_code == 400


def test_expired_code_is_expired_token(
    client: TestClient, owner: SoftAuthenticator, device_app: str
) -> None:
    data = start(client, device_app).json()
    request_id = request_id_for(client, data["user_code"])
    with Session(get_context(client).engine) as db:
        db.execute(update(DeviceCode).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.commit()
    answer = poll(client, device_app, data["device_code"])
    assert answer.status_code == 400
    assert answer.json()["error"] == "expired_token"
    assert enter(client, data["user_code"]).status_code == 400
    gone = client.get("/device/request", follow_redirects=False)
    assert (gone.status_code, gone.headers["location"]) == (303, "/device")
    assert post(client, "/device/confirm/options").status_code == 409
    assert decide(client, None, request_id, "deny").status_code == 409


def test_allowed_but_expired_before_the_poll_is_expired_token(
    client: TestClient, owner: SoftAuthenticator, device_app: str
) -> None:
    data = start(client, device_app).json()
    assert decide(client, owner, request_id_for(client, data["user_code"])).status_code == 200
    with Session(get_context(client).engine) as db:
        db.execute(update(DeviceCode).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.commit()
    assert poll(client, device_app, data["device_code"]).json()["error"] == "expired_token"
    with Session(get_context(client).engine) as db:
        assert db.exec(select(DeviceCode)).one().sealed_key is None


def test_allow_needs_a_fresh_passkey_assertion(
    client: TestClient, owner: SoftAuthenticator, device_app: str
) -> None:
    data = start(client, device_app).json()
    request_id = request_id_for(client, data["user_code"])
    bare = post(
        client,
        "/device/decision",
        {"query": request_id, "decision": "allow", "choices": DEFAULT_CHOICES},
    )
    assert bare.status_code == 400
    assert "passkey" in bare.json()["error"]
    assert poll(client, device_app, data["device_code"]).json()["error"] == "authorization_pending"
    # Signed out: the consent screen asks to sign in, and the decision endpoint refuses.
    other = TestClient(client.app, base_url=BROKER)
    assert enter(other, data["user_code"]).status_code == 303
    assert "Sign in with passkey" in other.get("/device/request").text
    assert (
        post(other, "/device/decision", {"query": request_id, "decision": "deny"}).status_code
        == 401
    )
    cross = client.post(
        "/device/decision",
        json={"query": request_id, "decision": "deny"},
        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
    )
    assert cross.status_code == 403
    assert enter(client, data["user_code"], **{"sec-fetch-site": "cross-site"}).status_code == 403


def test_the_owners_key_is_sealed_to_the_device_code(
    client: TestClient, owner: SoftAuthenticator, device_app: str
) -> None:
    data = start(client, device_app).json()
    assert decide(client, owner, request_id_for(client, data["user_code"])).status_code == 200
    with Session(get_context(client).engine) as db:
        row = db.exec(select(DeviceCode)).one()
    assert row.sealed_key is not None
    assert row.consent_key is not None
    assert GOOD_KEY not in row.sealed_key
    sealed = sealed_box.Sealed(row.consent_key, row.sealed_key)
    binding = vault.Binding(row.id, device_codes.DEVICE_USE)
    with pytest.raises(vault.SealedRecordError):
        sealed_box.open_with(sealed, "not the device code", expected_binding=binding)
    with pytest.raises(vault.SealedRecordError):
        sealed_box.open_with(
            sealed, data["device_code"], expected_binding=vault.Binding("other", binding.purpose)
        )
    assert sealed_box.open_with(sealed, data["device_code"], expected_binding=binding) == (
        GOOD_KEY.encode()
    )


def test_racing_polls_redeem_once(live: Live) -> None:
    engine = live.ctx.engine
    client_id = register_client(engine, name="Racer", redirect_uris=[], device=True)
    web, authn = live.owner()
    data = httpx.post(
        f"{live.url}/oauth/device_authorization", data={"client_id": client_id, "scope": "chat"}
    ).json()
    entered = web.post("/device", data={"user_code": data["user_code"]}, headers=SAME_ORIGIN)
    request_id = consent_query(entered)
    assert decide(web, authn, request_id).status_code == 200  # type: ignore[arg-type]
    answers: list[int] = []
    barrier = threading.Barrier(8)

    def redeem() -> None:
        barrier.wait()
        answer = httpx.post(
            f"{live.url}/oauth/token",
            data={
                "grant_type": DEVICE_CODE_GRANT_TYPE,
                "device_code": data["device_code"],
                "client_id": client_id,
            },
            timeout=30,
        )
        answers.append(answer.status_code)

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [200] + [400] * 7


def row_id(client: TestClient) -> str:
    """The newest request's id, as an attacker who entered its code on their side knows it."""
    with Session(get_context(client).engine) as db:
        rows = db.exec(select(DeviceCode)).all()
    return max(rows, key=lambda r: r.expires_at).id


def test_a_link_to_someone_elses_request_leads_to_code_entry(
    client: TestClient, owner: SoftAuthenticator, device_app: str
) -> None:
    # RFC 8628 §5.4: an attacker starts the flow on their device, enters its code in their own
    # browser and sends the owner a link, hoping for an Allow without the owner typing a code.
    data = start(client, device_app).json()
    attacker = TestClient(client.app, base_url=BROKER)
    assert enter(attacker, data["user_code"]).status_code == 303
    request_id = row_id(client)
    for link in (f"/device/request/{request_id}", f"/device/request?id={request_id}"):
        opened = client.get(link, follow_redirects=False)
        assert opened.status_code in (303, 404)
        assert 'id="consent"' not in opened.text
    shown = client.get("/device/request", follow_redirects=False)
    assert (shown.status_code, shown.headers["location"]) == (303, "/device")
    # A cookie naming the request but not its code is no way in either.
    client.cookies.set("kb_device", f"{request_id}.BCDFGHJK", domain="localhost", path="/device")
    assert client.get("/device/request", follow_redirects=False).status_code == 303
    client.cookies.delete("kb_device", domain="localhost", path="/device")
    # Neither Allow (its confirmation cannot even begin) nor Deny from the owner's session.
    assert decide(client, owner, request_id).status_code == 409
    assert decide(client, None, request_id, "deny").status_code == 409
    assert poll(client, device_app, data["device_code"]).json()["error"] == "authorization_pending"
    # Typed by the owner: the consent screen shows the code to compare with the device's.
    assert request_id_for(client, data["user_code"]) == request_id
    assert data["user_code"] in client.get("/device/request").text


def test_another_account_cannot_deny_a_request(
    client: TestClient, owner: SoftAuthenticator, device_app: str
) -> None:
    data = start(client, device_app).json()
    request_id = request_id_for(client, data["user_code"])
    stranger = TestClient(client.app, base_url=BROKER)
    register(stranger)
    assert decide(stranger, None, request_id, "deny").status_code == 409
    assert poll(client, device_app, data["device_code"]).json()["error"] == "authorization_pending"
    assert decide(client, owner, request_id).status_code == 200


def test_a_confirmation_is_bound_to_its_request_and_action(
    client: TestClient, owner: SoftAuthenticator, device_app: str
) -> None:
    x, y = start(client, device_app).json(), start(client, device_app).json()
    request_id_for(client, x["user_code"])
    begun_for_x = post(client, "/device/confirm/options").json()
    ry = request_id_for(client, y["user_code"])
    body = {"query": ry, "decision": "allow", "choices": DEFAULT_CHOICES}
    spent = post(
        client,
        "/device/decision",
        {
            **body,
            "ceremony": begun_for_x["ceremony"],
            "credential": owner.get(begun_for_x["publicKey"]),
        },
    )
    assert spent.status_code == 400, spent.text
    assert "another session" in spent.json()["error"]
    # Nor does a confirmation begun for something else (the web consent, settings) count.
    general = post(client, "/auth/confirm/options").json()
    other = post(
        client,
        "/device/decision",
        {**body, "ceremony": general["ceremony"], "credential": owner.get(general["publicKey"])},
    )
    assert other.status_code == 400, other.text
    assert "passkey request" in other.json()["error"]
    for started in (x, y):
        answer = poll(client, device_app, started["device_code"])
        assert answer.json()["error"] == "authorization_pending"
    # A device confirmation is not spendable at the web consent either.
    device_ceremony = post(client, "/device/confirm/options").json()
    web_query = authorize_query(challenge=pkce()[1])
    web = post(
        client,
        "/authorize/decision",
        {
            "query": web_query,
            "decision": "allow",
            "choices": DEFAULT_CHOICES,
            "ceremony": device_ceremony["ceremony"],
            "credential": owner.get(device_ceremony["publicKey"]),
        },
    )
    assert web.status_code == 400
    assert "passkey request" in web.json()["error"]
    assert decide(client, owner, ry).status_code == 200


# --- guessing user codes ----------------------------------------------------------------


@pytest.fixture
def strict(settings: Settings) -> Iterator[TestClient]:
    """The app with the real abuse limits (the suite's default multiplies them by 100)."""
    app = create_app(replace(settings, abuse_limit_scale=1))
    with TestClient(app, base_url=BROKER, client=("198.51.100.1", 4000)) as test_client:
        yield test_client


def from_ip(app_client: TestClient, ip: str) -> TestClient:
    return TestClient(app_client.app, base_url=BROKER, client=(ip, 4000))


def test_guessing_is_limited_per_ip_and_logged(
    strict: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    engine = get_context(strict).engine
    app_id = register_client(engine, name="Guessed", redirect_uris=[], device=True)
    live_codes = {start(strict, app_id).json()["user_code"] for _ in range(50)}
    caplog.set_level(logging.WARNING, logger="keybroker.device")
    # An attacker walks the code space from one address, as fast as it is let.
    alphabet = device_codes.USER_CODE_ALPHABET
    allowed = 0
    for n in range(200):
        guess = "BBBB-" + "".join(alphabet[(n // 20**i) % 20] for i in range(4))
        if guess in live_codes:
            continue
        answer = enter(strict, guess)
        if answer.status_code == 429:
            assert "Too many attempts" in answer.text
            assert int(answer.headers["retry-after"]) > 0
            break
        assert answer.status_code == 400
        assert "not valid" in answer.text
        allowed += 1
    assert allowed == 10
    wrong = [r for r in caplog.records if "wrong, expired or used user code" in r.getMessage()]
    assert len(wrong) == 10
    assert all("198.51.100.1" in r.getMessage() for r in wrong)
    assert not any(code.replace("-", "") in caplog.text for code in live_codes)
    # Past the limit no code is tried at all, not even a right one.
    assert enter(strict, next(iter(live_codes))).status_code == 429
    # Another address is not held up by this one.
    assert enter(from_ip(strict, "203.0.113.9"), next(iter(live_codes))).status_code == 303
    # The arithmetic behind the limits: over a code's whole life, one address can try at
    # most 100 codes; against even 10,000 live codes that finds one with odds below 1 in 25,000.
    tries = abuse_rule_per_minute("USER_CODE_PER_IP") * 10
    assert tries == 100
    assert tries * 10_000 / len(alphabet) ** device_codes.USER_CODE_LENGTH < 1 / 25_000


def abuse_rule_per_minute(name: str) -> int:
    from keybroker.web import abuse

    rule: abuse.Rule = getattr(abuse, name)
    return rule.per_minute


def test_one_code_is_limited_across_addresses(strict: TestClient) -> None:
    engine = get_context(strict).engine
    app_id = register_client(engine, name="Targeted", redirect_uris=[], device=True)
    user_code = start(strict, app_id).json()["user_code"]
    for n in range(5):
        assert enter(from_ip(strict, f"192.0.2.{n + 1}"), user_code).status_code == 303
    assert enter(from_ip(strict, "192.0.2.77"), user_code).status_code == 429


def wrong_guesses(count: int, start: int = 0) -> Iterator[str]:
    alphabet = device_codes.USER_CODE_ALPHABET
    for n in range(start, start + count):
        yield "ZZZZ-" + "".join(alphabet[(n // 20**i) % 20] for i in range(4))


def test_ipv6_addresses_share_their_64_and_mapped_ipv4_its_address(strict: TestClient) -> None:
    guesses = wrong_guesses(40)
    # One host is usually given a whole /64: every address in it shares one budget.
    for n in range(10):
        assert enter(from_ip(strict, f"2001:db8:1:2::{n + 1:x}"), next(guesses)).status_code == 400
    assert enter(from_ip(strict, "2001:db8:1:2:ffff::9"), next(guesses)).status_code == 429
    assert enter(from_ip(strict, "2001:db8:1:3::1"), next(guesses)).status_code == 400
    # An IPv4-mapped IPv6 address is its IPv4 address.
    for _ in range(10):
        assert enter(from_ip(strict, "192.0.2.50"), next(guesses)).status_code == 400
    assert enter(from_ip(strict, "::ffff:192.0.2.50"), next(guesses)).status_code == 429


@pytest.mark.parametrize(
    ("host", "network"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:a:b:c:d:e:f", "2001:db8:a:b::/64"),
        ("2001:DB8:A:B::1", "2001:db8:a:b::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("testclient", "testclient"),
    ],
)
def test_the_network_limits_count(host: str, network: str) -> None:
    from keybroker.web import abuse

    assert abuse.network_of(host) == network


def test_anonymous_guessing_shares_one_budget_that_owners_do_not_need(
    strict: TestClient,
) -> None:
    engine = get_context(strict).engine
    app_id = register_client(engine, name="Flooded", redirect_uris=[], device=True)
    user_code = start(strict, app_id).json()["user_code"]
    # Guessers spread over many networks (cheap in IPv6), each within its own limit, share
    # one budget: a burst of ``budget``, then one entry per 60/budget seconds (GCRA).
    budget = abuse_rule_per_minute("USER_CODE_ANONYMOUS")
    guesses = wrong_guesses(budget * 3)
    began = time.monotonic()
    allowed = 0
    while True:
        answer = enter(from_ip(strict, f"2001:db8:{allowed // 10}::1"), next(guesses))
        if answer.status_code == 429:
            break
        assert answer.status_code == 400
        allowed += 1
    refill = (time.monotonic() - began) / (60 / budget)
    assert budget <= allowed <= budget + refill + 1
    # The refused entry came from a network with its own budget left (fewer than 10 tries):
    # it waits for the shared budget, but not for long.
    assert 0 < int(answer.headers["retry-after"]) <= 60
    # The arithmetic: over a code's 10 minutes, all guessers together try at most 1,000 codes.
    assert budget * 10 / len(device_codes.USER_CODE_ALPHABET) ** device_codes.USER_CODE_LENGTH < (
        1e-7
    )
    # A signed-in owner is counted per account instead, so the flood does not lock them out.
    owner = from_ip(strict, "203.0.113.50")
    save_key(owner, register(owner))
    assert enter(owner, user_code).status_code == 303
    # An account that guesses is limited per account, from whichever network it comes.
    for _ in range(abuse_rule_per_minute("USER_CODE_PER_ACCOUNT") - 1):
        assert enter(owner, next(guesses)).status_code == 400
    elsewhere = TestClient(
        strict.app, base_url=BROKER, client=("203.0.113.99", 4000), cookies=owner.cookies
    )
    assert enter(elsewhere, next(guesses)).status_code == 429


# --- user codes -------------------------------------------------------------------------


def test_new_user_codes_look_right() -> None:
    codes = {device_codes.new_user_code() for _ in range(500)}
    assert len(codes) == 500
    assert all(USER_CODE.match(code) for code in codes)
    # No look-alikes and no vowels (RFC 8628 §6.1).
    assert not set("".join(codes)) & set("AEIOU0123456789")


@given(st.text(max_size=30))
def test_normalize_accepts_only_codes(text: str) -> None:
    normalized = device_codes.normalize_user_code(text)
    if normalized is not None:
        assert len(normalized) == 8
        assert set(normalized) <= set(device_codes.USER_CODE_ALPHABET)


@given(st.text(alphabet=device_codes.USER_CODE_ALPHABET, min_size=8, max_size=8))
def test_normalize_reads_a_code_however_typed(code: str) -> None:
    for typed in (code, f"{code[:4]}-{code[4:]}", code.lower(), f" {code[:4]} {code[4:]} "):
        assert device_codes.normalize_user_code(typed) == code
