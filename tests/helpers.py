"""Shared steps for API-level tests: accounts made with the software authenticator."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from tests.softauthn import SoftAuthenticator

SAME_ORIGIN = {"origin": "http://localhost:8000", "sec-fetch-site": "same-origin"}


def post(client: TestClient, url: str, body: dict[str, Any] | None = None) -> Any:
    return client.post(url, json=body or {}, headers=SAME_ORIGIN)


def register(client: TestClient, authn: SoftAuthenticator | None = None) -> SoftAuthenticator:
    authn = authn or SoftAuthenticator()
    start = post(client, "/auth/register/options").json()
    done = post(
        client,
        "/auth/register/verify",
        {"ceremony": start["ceremony"], "credential": authn.create(start["publicKey"])},
    )
    assert done.status_code == 200, done.text
    return authn


def login(client: TestClient, authn: SoftAuthenticator, **bend: Any) -> Any:
    start = post(client, "/auth/login/options").json()
    return post(
        client,
        "/auth/login/verify",
        {"ceremony": start["ceremony"], "credential": authn.get(start["publicKey"], **bend)},
    )


def add_passkey(
    client: TestClient,
    new: SoftAuthenticator,
    confirm_with: SoftAuthenticator | None,
    name: str = "Second",
) -> Any:
    """Add ``new``'s passkey, confirmed with a fresh assertion by ``confirm_with``'s (None
    sends no confirmation, as a thief with only the session would)."""
    start = post(client, "/auth/passkeys/options").json()
    body: dict[str, Any] = {
        "ceremony": start["ceremony"],
        "credential": new.create(start["publicKey"]),
        "name": name,
    }
    if confirm_with is not None:
        first = post(client, "/auth/confirm/options").json()
        body["confirm"] = {
            "ceremony": first["ceremony"],
            "credential": confirm_with.get(first["publicKey"]),
        }
    return post(client, "/auth/passkeys/verify", body)


def signed_in(client: TestClient) -> bool:
    return client.get("/settings", follow_redirects=False).status_code == 200


GOOD_KEY = "sk-test-" + "K" * 40
APP = "http://127.0.0.1:5555"


def confirmation_fields(client: TestClient, authn: SoftAuthenticator) -> dict[str, str]:
    """A fresh passkey assertion as the key form's hidden fields (what static/js/key.js does)."""
    import json

    start = post(client, "/auth/confirm/options").json()
    return {"ceremony": start["ceremony"], "credential": json.dumps(authn.get(start["publicKey"]))}


def post_key(client: TestClient, authn: SoftAuthenticator, key: str, next_url: str = "/key") -> Any:
    """The key form, confirmed with ``authn``'s passkey."""
    fields = {"key": key, "next": next_url, **confirmation_fields(client, authn)}
    return client.post("/key", data=fields, headers=SAME_ORIGIN)


def save_key(client: TestClient, authn: SoftAuthenticator, key: str = GOOD_KEY) -> None:
    page = post_key(client, authn, key)
    assert page.status_code == 200, page.text


def pkce() -> tuple[str, str]:
    import base64
    import hashlib
    import secrets

    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_query(client_id: str = APP, challenge: str | None = None, **extra: str) -> str:
    from urllib.parse import urlencode

    params = {
        "response_type": "code",
        "client_id": client_id,
        "state": "st-123",
        "scope": "chat models",
        "code_challenge_method": "S256",
    }
    if challenge is not None:
        params["code_challenge"] = challenge
    if client_id.startswith("http"):
        params["response_mode"] = "web_message"
    params.update(extra)
    return urlencode({k: v for k, v in params.items() if v != ""})


DEFAULT_CHOICES = {
    "scopes": ["chat", "models"],
    "models": "",
    "budget_usd": "5",
    "rpm": "60",
    "days": "30",
}


def decide(
    client: TestClient,
    authn: SoftAuthenticator | None,
    query: str,
    decision: str = "allow",
    choices: dict[str, Any] | None = None,
) -> Any:
    body: dict[str, Any] = {"query": query, "decision": decision}
    if decision == "allow":
        assert authn is not None
        start = post(client, "/auth/confirm/options").json()
        body.update(
            choices=choices or DEFAULT_CHOICES,
            ceremony=start["ceremony"],
            credential=authn.get(start["publicKey"]),
        )
    return post(client, "/authorize/decision", body)


def redeem(client: TestClient, code: str, verifier: str, client_id: str = APP, **extra: str) -> Any:
    headers = {"origin": client_id} if client_id.startswith("http") else {}
    return client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": client_id,
            **extra,
        },
        headers=headers,
    )


def grant_token(
    client: TestClient,
    authn: SoftAuthenticator,
    choices: dict[str, Any] | None = None,
    client_id: str = APP,
) -> dict[str, Any]:
    """The whole popup flow at the HTTP level: returns the token response."""
    verifier, challenge = pkce()
    scope = " ".join((choices or DEFAULT_CHOICES)["scopes"])
    query = authorize_query(client_id, challenge, scope=scope)
    assert client.get(f"/authorize?{query}").status_code == 200
    result = decide(client, authn, query, choices=choices).json()
    token = redeem(client, result["message"]["code"], verifier, client_id)
    assert token.status_code == 200, token.text
    data: dict[str, Any] = token.json()
    return data


def confirmed(
    client: TestClient, authn: SoftAuthenticator, url: str, fields: dict[str, Any] | None = None
) -> Any:
    """POST a consequential action (with ``fields``) and a fresh passkey confirmation."""
    start = post(client, "/auth/confirm/options").json()
    return post(
        client,
        url,
        {
            **(fields or {}),
            "ceremony": start["ceremony"],
            "credential": authn.get(start["publicKey"]),
        },
    )
