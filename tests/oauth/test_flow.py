"""OAuth 2.1 authorization-code flow with PKCE through the real app (HTTP level)."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select, update
from sqlmodel import Session
from starlette.testclient import TestClient

from keybroker.context import get_context
from keybroker.crypto import tokens
from keybroker.grants import get_grant
from keybroker.models import AuthorizationCode, Grant, utcnow
from keybroker.oauth.clients import register_client
from tests.helpers import (
    APP,
    GOOD_KEY,
    SAME_ORIGIN,
    authorize_query,
    decide,
    grant_token,
    pkce,
    redeem,
    register,
)
from tests.softauthn import SoftAuthenticator

LOOPBACK = "http://127.0.0.1/callback"


@pytest.fixture
def cli_app(client: TestClient) -> str:
    return register_client(
        get_context(client).engine,
        name="Test CLI",
        redirect_uris=[LOOPBACK, "https://app.example/cb"],
    )


def test_web_message_flow_issues_a_working_token(
    client: TestClient, owner: SoftAuthenticator
) -> None:
    verifier, challenge = pkce()
    query = authorize_query(APP, challenge)
    page = client.get(f"/authorize?{query}")
    assert page.status_code == 200
    assert APP in page.text
    assert "Allow" in page.text
    assert page.headers["cross-origin-opener-policy"] == "unsafe-none"
    assert "access-control-allow-origin" not in page.headers
    result = decide(client, owner, query).json()
    assert result["mode"] == "web_message"
    assert result["origin"] == APP
    message = result["message"]
    assert message["type"] == "authorization_response"
    assert message["state"] == "st-123"
    assert message["iss"] == "http://localhost:8000"
    token = redeem(client, message["code"], verifier)
    assert token.status_code == 200, token.text
    assert token.headers["access-control-allow-origin"] == APP
    assert token.headers["cache-control"] == "no-store"
    data = token.json()
    assert data["token_type"] == "Bearer"
    assert data["base_url"] == "http://localhost:8000/v1"
    assert data["scope"] == "chat models"
    assert data["expires_in"] == 30 * 86400
    parsed = tokens.parse_token(data["access_token"])
    grant = get_grant(get_context(client).engine, parsed.grant_id)
    assert grant is not None
    assert grant.live
    assert grant.client_id == APP
    assert grant.web_origin == APP
    # The grant copy opens with the token and yields the owner's key.
    assert grant.sealed_copy is not None
    assert tokens.open_grant_copy(grant.sealed_copy, parsed, get_context(client).ring) == GOOD_KEY


def test_consent_narrowing_is_kept(client: TestClient, owner: SoftAuthenticator) -> None:
    data = grant_token(
        client,
        owner,
        choices={
            "scopes": ["chat"],
            "models": "gpt-4o-mini",
            "budget_usd": "1.25",
            "rpm": "7",
            "days": "2",
        },
    )
    assert data["scope"] == "chat"
    assert data["expires_in"] == 2 * 86400
    grant = get_grant(get_context(client).engine, tokens.parse_token(data["access_token"]).grant_id)
    assert grant is not None
    assert grant.models == ("gpt-4o-mini",)
    assert grant.budget_microusd == 1_250_000
    assert grant.rpm == 7
    assert grant.scopes == {"chat"}


def test_loopback_redirect_any_port(
    client: TestClient, owner: SoftAuthenticator, cli_app: str
) -> None:
    verifier, challenge = pkce()
    redirect = "http://127.0.0.1:54321/callback"
    query = authorize_query(cli_app, challenge, redirect_uri=redirect)
    assert client.get(f"/authorize?{query}").status_code == 200
    result = decide(client, owner, query).json()
    assert result["mode"] == "redirect"
    location = urlsplit(result["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
    params = parse_qs(location.query)
    assert params["state"] == ["st-123"]
    assert params["iss"] == ["http://localhost:8000"]
    token = redeem(client, params["code"][0], verifier, cli_app, redirect_uri=redirect)
    assert token.status_code == 200, token.text
    assert "access-control-allow-origin" not in token.headers


def test_deny_returns_access_denied(
    client: TestClient, owner: SoftAuthenticator, cli_app: str
) -> None:
    _, challenge = pkce()
    result = decide(client, None, authorize_query(APP, challenge), "deny").json()
    assert result["message"]["error"] == "access_denied"
    assert result["message"]["state"] == "st-123"
    assert "code" not in result["message"]
    redirect = "http://127.0.0.1:40000/callback"
    denied = decide(
        client, None, authorize_query(cli_app, challenge, redirect_uri=redirect), "deny"
    ).json()
    assert denied["location"].startswith(redirect + "?")
    assert "error=access_denied" in denied["location"]


def test_allow_needs_a_fresh_passkey_assertion(
    client: TestClient, owner: SoftAuthenticator
) -> None:
    _, challenge = pkce()
    query = authorize_query(APP, challenge)
    response = client.post(
        "/authorize/decision",
        headers=SAME_ORIGIN,
        json={
            "query": query,
            "decision": "allow",
            "choices": {"scopes": ["chat"], "budget_usd": "1", "rpm": "1", "days": "1"},
        },
    )
    assert response.status_code == 400
    assert "passkey" in response.json()["error"]
    stranger = register(TestClient(client.app, base_url="http://localhost:8000"))
    start = client.post("/auth/confirm/options", headers=SAME_ORIGIN, json={}).json()
    response = client.post(
        "/authorize/decision",
        headers=SAME_ORIGIN,
        json={
            "query": query,
            "decision": "allow",
            "ceremony": start["ceremony"],
            "credential": stranger.get(start["publicKey"]),
            "choices": {"scopes": ["chat"], "budget_usd": "1", "rpm": "1", "days": "1"},
        },
    )
    assert response.status_code == 400
    assert "not one of this account" in response.json()["error"]


def test_wrong_verifier_is_invalid_grant(client: TestClient, owner: SoftAuthenticator) -> None:
    _, challenge = pkce()
    query = authorize_query(APP, challenge)
    code = decide(client, owner, query).json()["message"]["code"]
    other_verifier, _ = pkce()
    response = redeem(client, code, other_verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_reused_code_fails_and_revokes_the_first_grant(
    client: TestClient, owner: SoftAuthenticator
) -> None:
    verifier, challenge = pkce()
    code = decide(client, owner, authorize_query(APP, challenge)).json()["message"]["code"]
    first = redeem(client, code, verifier)
    assert first.status_code == 200
    second = redeem(client, code, verifier)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    grant_id = tokens.parse_token(first.json()["access_token"]).grant_id
    grant = get_grant(get_context(client).engine, grant_id)
    assert grant is not None
    assert grant.revoked


def test_expired_code_is_invalid_grant(client: TestClient, owner: SoftAuthenticator) -> None:
    verifier, challenge = pkce()
    code = decide(client, owner, authorize_query(APP, challenge)).json()["message"]["code"]
    with Session(get_context(client).engine) as db:
        db.execute(update(AuthorizationCode).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.commit()
    response = redeem(client, code, verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_codes_and_keys_are_not_stored_in_clear(
    client: TestClient, owner: SoftAuthenticator
) -> None:
    verifier, challenge = pkce()
    code = decide(client, owner, authorize_query(APP, challenge)).json()["message"]["code"]
    with Session(get_context(client).engine) as db:
        row = db.execute(select(AuthorizationCode)).scalar_one()
    assert code not in row.id
    assert row.sealed_key is not None
    assert GOOD_KEY not in row.sealed_key
    token = redeem(client, code, verifier).json()["access_token"]
    with Session(get_context(client).engine) as db:
        row = db.execute(select(AuthorizationCode)).scalar_one()
        grant = db.execute(select(Grant)).scalar_one()
    assert row.sealed_key is None
    assert tokens.parse_token(token).secret not in grant.secret_hash


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"code_challenge": ""}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": ""}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "chat admin"}, "invalid_scope"),
        ({"response_mode": ""}, "invalid_request"),
    ],
)
def test_bad_web_requests_are_refused_to_the_opener(
    client: TestClient, extra: dict[str, str], error: str
) -> None:
    _, challenge = pkce()
    query = authorize_query(APP, extra.pop("code_challenge", challenge), **extra)
    page = client.get(f"/authorize?{query}", follow_redirects=False)
    assert page.status_code == 400
    assert "location" not in page.headers
    assert error in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
)
def test_bad_requests_from_a_registered_app_go_back_with_the_error(
    client: TestClient, cli_app: str, extra: dict[str, str], error: str
) -> None:
    _, challenge = pkce()
    redirect = "http://127.0.0.1:40000/callback"
    query = authorize_query(cli_app, challenge, redirect_uri=redirect, **extra)
    page = client.get(f"/authorize?{query}", follow_redirects=False)
    assert page.status_code == 302
    location = page.headers["location"]
    assert location.startswith(redirect + "?")
    assert f"error={error}" in location
    assert "iss=http" in location


@pytest.mark.parametrize(
    "redirect",
    [
        "http://127.0.0.1:40000/callback/",  # trailing slash
        "http://127.0.0.1:40000/Callback",  # case
        "http://127.0.0.1:40000/callback?x=1",  # extra query
        "https://app.example:8443/cb",  # another port, not loopback
        "https://app.example/cb/",
        "https://APP.example/cb",
        "https://evil.example@app.example/cb",  # userinfo
        "https://app.example@evil.example/cb",
        "https://app.example/cb#frag",  # fragment
        "http://localhost:40000/callback",  # loopback by name is not the registered IP
        "https://evil.example/cb",
    ],
)
def test_redirect_uri_variants_get_an_error_page_never_a_redirect(
    client: TestClient, cli_app: str, redirect: str
) -> None:
    _, challenge = pkce()
    page = client.get(
        f"/authorize?{authorize_query(cli_app, challenge, redirect_uri=redirect)}",
        follow_redirects=False,
    )
    assert page.status_code == 400
    assert "location" not in page.headers
    assert "invalid_request" in page.text


@pytest.mark.parametrize(
    "client_id",
    ["unknown-app", "https://app.example/path", "http://app.example", "javascript:alert(1)"],
)
def test_unknown_client_gets_an_error_page(client: TestClient, client_id: str) -> None:
    _, challenge = pkce()
    page = client.get(f"/authorize?{authorize_query(client_id, challenge)}", follow_redirects=False)
    assert page.status_code == 400
    assert "location" not in page.headers
    assert "invalid_client" in page.text


def test_grant_type_password_is_unsupported(client: TestClient) -> None:
    response = client.post(
        "/oauth/token",
        data={"grant_type": "password", "client_id": APP, "username": "u", "password": "p"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_token_from_another_origin_is_refused(client: TestClient, owner: SoftAuthenticator) -> None:
    verifier, challenge = pkce()
    code = decide(client, owner, authorize_query(APP, challenge)).json()["message"]["code"]
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": APP,
        },
        headers={"origin": "https://evil.example"},
    )
    assert response.status_code == 401
    assert "access-control-allow-origin" not in response.headers


def test_revocation_endpoint(client: TestClient, owner: SoftAuthenticator) -> None:
    token = grant_token(client, owner)["access_token"]
    response = client.post(
        "/oauth/revoke", data={"token": token, "client_id": APP}, headers={"origin": APP}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    grant = get_grant(get_context(client).engine, tokens.parse_token(token).grant_id)
    assert grant is not None
    assert grant.revoked
    assert grant.sealed_copy is None
    # Unknown or garbage tokens: 200 as RFC 7009 §2.2 says, nothing revealed.
    garbage = client.post("/oauth/revoke", data={"token": "garbage", "client_id": APP})
    assert garbage.status_code == 200


def test_metadata(client: TestClient) -> None:
    data = client.get("/.well-known/oauth-authorization-server").json()
    assert data["issuer"] == "http://localhost:8000"
    assert data["code_challenge_methods_supported"] == ["S256"]
    assert data["authorization_endpoint"] == "http://localhost:8000/authorize"
    assert data["token_endpoint"] == "http://localhost:8000/oauth/token"
    assert data["revocation_endpoint"] == "http://localhost:8000/oauth/revoke"
    assert data["authorization_response_iss_parameter_supported"] is True


def test_signed_out_authorize_shows_sign_in(client: TestClient) -> None:
    _, challenge = pkce()
    page = client.get(f"/authorize?{authorize_query(APP, challenge)}")
    assert page.status_code == 200
    assert "Sign in with passkey" in page.text
    assert "Create passkey" in page.text


def test_no_key_asks_for_one(client: TestClient) -> None:
    register(client)
    _, challenge = pkce()
    page = client.get(f"/authorize?{authorize_query(APP, challenge)}")
    assert "OpenAI API key" in page.text
    assert "Save key" in page.text


def test_rewrap_moves_grant_copies_and_tokens_keep_working(
    client: TestClient, owner: SoftAuthenticator
) -> None:
    from keybroker.crypto.keyring import KeyRing
    from keybroker.rotation import rewrap_all

    ctx = get_context(client)
    token = tokens.parse_token(grant_token(client, owner)["access_token"])
    rotated, _ = ctx.ring.rotated()
    report = rewrap_all(ctx.engine, rotated)
    assert report.rewrapped == {"vault entries": 1, "grant copies": 1}
    assert not report.failed
    only_new = KeyRing.parse(rotated.serialize().split(",")[0])
    grant = get_grant(ctx.engine, token.grant_id)
    assert grant is not None
    assert grant.sealed_copy is not None
    assert tokens.open_grant_copy(grant.sealed_copy, token, only_new) == GOOD_KEY
