"""RFC 9700 / OAuth 2.1 items not already covered by tests/oauth/test_flow.py (SECURITY.md
maps every item to its test)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from starlette.testclient import TestClient

from keybroker.context import get_context
from keybroker.crypto import tokens
from keybroker.grants import get_grant
from tests.helpers import APP, authorize_query, decide, pkce, redeem, register, save_key


def test_two_parallel_redemptions_of_one_code_issue_one_token(client: TestClient) -> None:
    authn = register(client)
    save_key(client, authn)
    verifier, challenge = pkce()
    code = decide(client, authn, authorize_query(APP, challenge)).json()["message"]["code"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda _: redeem(client, code, verifier), range(2)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 400]
    failed = next(a for a in answers if a.status_code == 400)
    assert failed.json()["error"] == "invalid_grant"


def test_every_authorization_response_names_the_issuer(client: TestClient) -> None:
    """Mix-up defence (RFC 9207): success, denial and errors all carry iss."""
    authn = register(client)
    save_key(client, authn)
    _, challenge = pkce()
    query = authorize_query(APP, challenge)
    allowed = decide(client, authn, query).json()["message"]
    denied = decide(client, None, query, "deny").json()["message"]
    assert allowed["iss"] == denied["iss"] == "http://localhost:8000"
    error_page = client.get(f"/authorize?{authorize_query(APP, challenge, scope='admin')}")
    assert "http://localhost:8000" in error_page.text  # the error message carries iss too


def test_deny_never_redirects_a_web_app_anywhere(client: TestClient) -> None:
    save_key(client, register(client))
    _, challenge = pkce()
    result = decide(client, None, authorize_query(APP, challenge), "deny").json()
    assert result == {
        "mode": "web_message",
        "origin": APP,
        "message": {
            "type": "authorization_response",
            "error": "access_denied",
            "error_description": "The resource owner or authorization server denied the request",
            "state": "st-123",
            "iss": "http://localhost:8000",
        },
    }


def test_a_token_works_only_for_its_own_grant_secret(client: TestClient) -> None:
    from tests.helpers import grant_token

    authn = register(client)
    save_key(client, authn)
    first = tokens.parse_token(grant_token(client, authn)["access_token"])
    second = tokens.parse_token(grant_token(client, authn)["access_token"])
    swapped = str(tokens.AppToken(first.grant_id, second.secret))
    response = client.get("/v1/models", headers={"authorization": f"Bearer {swapped}"})
    assert response.status_code == 401
    grant = get_grant(get_context(client).engine, first.grant_id)
    assert grant is not None
    assert grant.live  # a wrong secret does not end the grant
