"""Passkey ceremonies through the real app, with a software authenticator bending each check."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlmodel import Session
from starlette.testclient import TestClient

from keybroker.context import get_context
from keybroker.models import BrowserSession, Challenge, Passkey, User, utcnow
from tests.helpers import SAME_ORIGIN, add_passkey, login, post, register, signed_in
from tests.softauthn import UP, UV, SoftAuthenticator


def count(client: TestClient, model: type) -> int:
    with Session(get_context(client).engine) as db:
        return int(db.execute(select(func.count()).select_from(model)).scalar_one())


def sign_out(client: TestClient) -> None:
    client.post("/auth/signout", headers=SAME_ORIGIN, follow_redirects=False)
    client.cookies.clear()


def test_create_account_sign_out_sign_in(client: TestClient) -> None:
    authn = register(client)
    assert signed_in(client)
    assert count(client, User) == 1
    sign_out(client)
    assert not signed_in(client)
    assert login(client, authn).status_code == 200
    assert signed_in(client)


def test_sign_out_ends_the_session_server_side(client: TestClient) -> None:
    register(client)
    cookie = dict(client.cookies)
    client.post("/auth/signout", headers=SAME_ORIGIN, follow_redirects=False)
    client.cookies.update(cookie)  # a copy of the old cookie must not work any more
    assert not signed_in(client)


def test_sign_in_rotates_the_session(client: TestClient) -> None:
    authn = register(client)
    first = dict(client.cookies)
    assert login(client, authn).status_code == 200
    assert dict(client.cookies) != first
    client.cookies.clear()
    client.cookies.update(first)
    assert not signed_in(client)
    assert count(client, BrowserSession) == 1


def test_add_second_passkey_and_sign_in_with_it(client: TestClient) -> None:
    first = register(client)
    second = SoftAuthenticator()
    start = post(client, "/auth/passkeys/options").json()
    assert len(start["publicKey"]["excludeCredentials"]) == 1
    done = add_passkey(client, second, confirm_with=first, name="Phone")
    assert done.status_code == 200, done.text
    sign_out(client)
    assert login(client, second).status_code == 200
    assert count(client, User) == 1
    assert count(client, Passkey) == 2


def refused(response: object, fragment: str) -> None:
    assert response.status_code in (400, 401, 403, 409, 413), response.text  # type: ignore[attr-defined]
    assert fragment.lower() in response.json()["error"].lower()  # type: ignore[attr-defined]


@pytest.fixture
def account(client: TestClient) -> SoftAuthenticator:
    authn = register(client)
    sign_out(client)
    assert login(client, authn).status_code == 200  # the stored sign count is now 1
    sign_out(client)
    return authn


def test_replayed_assertion_is_refused(client: TestClient, account: SoftAuthenticator) -> None:
    start = post(client, "/auth/login/options").json()
    body = {"ceremony": start["ceremony"], "credential": account.get(start["publicKey"])}
    assert post(client, "/auth/login/verify", body).status_code == 200
    sign_out(client)
    refused(post(client, "/auth/login/verify", body), "already used")
    assert not signed_in(client)


def test_expired_challenge_is_refused(client: TestClient, account: SoftAuthenticator) -> None:
    start = post(client, "/auth/login/options").json()
    with Session(get_context(client).engine) as db:
        db.execute(update(Challenge).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.commit()
    refused(
        post(
            client,
            "/auth/login/verify",
            {"ceremony": start["ceremony"], "credential": account.get(start["publicKey"])},
        ),
        "expired",
    )
    assert not signed_in(client)


@pytest.mark.parametrize(
    ("bend", "fragment"),
    [
        ({"origin": "https://evil.example"}, "origin"),
        ({"rp_id": "evil.example"}, "rp id"),
        ({"flags": UP}, "user verification"),
        ({"sign_count": 1}, "sign count"),  # not above the stored 1: a cloned key
        ({"user_handle": b"someone else"}, "another account"),
    ],
)
def test_bent_assertion_is_refused(
    client: TestClient, account: SoftAuthenticator, bend: dict[str, object], fragment: str
) -> None:
    before = count(client, BrowserSession)
    refused(login(client, account, **bend), fragment)
    assert not signed_in(client)
    assert count(client, BrowserSession) == before


def test_unknown_credential_is_refused(client: TestClient, account: SoftAuthenticator) -> None:
    stranger = SoftAuthenticator()
    stranger.user_handle = b"nobody"
    refused(login(client, stranger), "not registered")
    assert not signed_in(client)


@pytest.mark.parametrize(
    ("bend", "fragment"),
    [
        ({"origin": "https://evil.example"}, "origin"),
        ({"rp_id": "evil.example"}, "rp id"),
        ({"flags": UP}, "user verification"),
    ],
)
def test_bent_registration_is_refused(
    client: TestClient, bend: dict[str, object], fragment: str
) -> None:
    start = post(client, "/auth/register/options").json()
    credential = SoftAuthenticator().create(start["publicKey"], **bend)
    refused(
        post(
            client,
            "/auth/register/verify",
            {"ceremony": start["ceremony"], "credential": credential},
        ),
        fragment,
    )
    assert count(client, User) == 0
    assert not signed_in(client)


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"ceremony": 5}', b'"x"'])
def test_malformed_json_is_refused(client: TestClient, body: bytes) -> None:
    response = client.post(
        "/auth/login/verify",
        content=body,
        headers={**SAME_ORIGIN, "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]


def test_malformed_credential_is_refused(client: TestClient, account: SoftAuthenticator) -> None:
    start = post(client, "/auth/login/options").json()
    refused(
        post(
            client,
            "/auth/login/verify",
            {"ceremony": start["ceremony"], "credential": {"id": "abc", "response": "nope"}},
        ),
        "malformed",
    )


def test_oversized_body_is_refused(client: TestClient) -> None:
    response = client.post(
        "/auth/login/verify",
        content=b"{" + b" " * 200_000 + b"}",
        headers={**SAME_ORIGIN, "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "too large" in response.json()["error"]


def test_cross_site_ceremony_is_refused(client: TestClient) -> None:
    response = client.post(
        "/auth/register/options",
        json={},
        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
    )
    assert response.status_code == 403


def test_challenge_cannot_cross_purposes(client: TestClient) -> None:
    start = post(client, "/auth/register/options").json()
    authn = SoftAuthenticator()
    authn.create(start["publicKey"])
    credential = authn.get({"rpId": "localhost", "challenge": start["publicKey"]["challenge"]})
    response = post(
        client, "/auth/login/verify", {"ceremony": start["ceremony"], "credential": credential}
    )
    refused(response, "already used")


def test_user_verification_required_in_options(client: TestClient) -> None:
    start = post(client, "/auth/register/options").json()["publicKey"]
    assert start["authenticatorSelection"]["userVerification"] == "required"
    assert start["authenticatorSelection"]["residentKey"] == "required"
    assert post(client, "/auth/login/options").json()["publicKey"]["userVerification"] == "required"
    assert UV


def test_a_session_alone_adds_no_passkey(client: TestClient) -> None:
    """A stolen cookie: no confirmation, or one by another account's passkey, adds nothing."""
    owner = register(client)
    stranger = SoftAuthenticator()
    other = TestClient(client.app, base_url=str(client.base_url))
    with other:
        register(other, stranger)  # the thief's own account on this broker
    refused(add_passkey(client, SoftAuthenticator(), confirm_with=None), "confirm")
    refused(add_passkey(client, SoftAuthenticator(), confirm_with=stranger), "not one of")
    assert count(client, Passkey) == 2  # the owner's and the thief's own, nothing added
    assert add_passkey(client, SoftAuthenticator(), confirm_with=owner).status_code == 200
    assert count(client, Passkey) == 3
