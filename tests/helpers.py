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


def signed_in(client: TestClient) -> bool:
    return client.get("/settings", follow_redirects=False).status_code == 200
