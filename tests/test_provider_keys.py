"""The key page through the real app against the mock upstream."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import func, select
from sqlmodel import Session
from starlette.testclient import TestClient

from keybroker import provider_keys
from keybroker.context import get_context
from keybroker.crypto.keyring import KeyRing
from keybroker.models import AuditEvent, User, VaultEntry
from keybroker.settings import Settings
from tests.helpers import SAME_ORIGIN, confirmed, post_key, register
from tests.softauthn import SoftAuthenticator
from tests.upstream import Upstream

GOOD_KEY = "sk-test-" + "G" * 40


def save(client: TestClient, authn: SoftAuthenticator, key: str) -> object:
    return post_key(client, authn, key)


def entries(client: TestClient) -> int:
    with Session(get_context(client).engine) as db:
        return int(db.execute(select(func.count()).select_from(VaultEntry)).scalar_one())


@pytest.fixture
def authn(client: TestClient) -> SoftAuthenticator:
    return register(client)


@pytest.fixture
def owner(client: TestClient, authn: SoftAuthenticator) -> TestClient:
    return client


def test_key_page_needs_sign_in(client: TestClient) -> None:
    response = client.get("/key", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=/key"


def test_save_shows_masked_then_replace_then_delete(
    owner: TestClient, authn: SoftAuthenticator
) -> None:
    page = save(owner, authn, f"  {GOOD_KEY}\n")
    assert page.status_code == 200
    assert "sk-...GGGG" in page.text
    assert GOOD_KEY not in page.text
    ctx = get_context(owner)
    assert provider_keys.open_key(ctx.engine, ctx.ring, owner_id(owner)) == GOOD_KEY

    replacement = "sk-test-" + "R" * 40
    page = save(owner, authn, replacement)
    assert "sk-...RRRR" in page.text
    assert provider_keys.open_key(ctx.engine, ctx.ring, owner_id(owner)) == replacement
    assert entries(owner) == 1

    confirm = owner.get("/key/delete")
    assert "Delete your OpenAI key?" in confirm.text
    assert entries(owner) == 1
    unconfirmed = owner.post("/settings/key/delete", json={}, headers=SAME_ORIGIN)
    assert unconfirmed.status_code == 400
    assert entries(owner) == 1
    done = confirmed(owner, authn, "/settings/key/delete")
    assert done.json() == {"redirect": "/key?deleted=1"}
    assert "Key deleted" in owner.get("/key?deleted=1").text
    assert entries(owner) == 0
    with Session(ctx.engine) as db:
        actions = list(db.execute(select(AuditEvent.action)).scalars())
    assert {"key.saved", "key.replaced", "key.deleted"} <= set(actions)


def owner_id(client: TestClient) -> str:
    with Session(get_context(client).engine) as db:
        return db.execute(select(User.id)).scalar_one()


@pytest.mark.parametrize(
    ("key", "status", "fragment"),
    [
        ("", 400, "field was empty"),
        ("   \t ", 400, "field was empty"),
        ("x" * 1_000_000, 413, "far longer than an OpenAI API key"),
        ("sk-" + "x" * 600, 400, "far longer"),
        ("sk-tëst-" + "a" * 30, 400, "characters an OpenAI API key never has"),
        ("pk-" + "a" * 30, 400, "start with sk-"),
        ("sk-abc", 400, "too short"),
        ("sk-test-bad-" + "a" * 30, 400, "OpenAI rejected this key: Incorrect API key provided"),
        ("sk-test-quota-" + "a" * 30, 400, "out of quota"),
    ],
)
def test_bad_input_gets_a_clear_message_and_stores_nothing(
    owner: TestClient, authn: SoftAuthenticator, key: str, status: int, fragment: str
) -> None:
    page = save(owner, authn, key)
    assert page.status_code == status
    assert fragment in page.text
    assert entries(owner) == 0
    if len(key) > 8 and key.strip():
        assert key.strip() not in page.text
        assert key.strip()[-12:] not in page.text  # not even the upstream's masked echo


def test_upstream_down_gets_a_retry_message(
    owner: TestClient, authn: SoftAuthenticator, settings: Settings
) -> None:
    get_context(owner).settings = _with(settings, upstream_url="http://127.0.0.1:9/v1")
    page = save(owner, authn, GOOD_KEY)
    assert page.status_code == 502
    assert "could not be reached" in page.text
    assert "try again" in page.text
    assert entries(owner) == 0


def test_upstream_too_slow_gets_a_retry_message(
    owner: TestClient, authn: SoftAuthenticator, upstream: Upstream
) -> None:
    page = save(owner, authn, "sk-test-slow-" + "a" * 30)
    assert page.status_code == 504
    assert "did not answer in time" in page.text
    assert entries(owner) == 0


def test_cross_site_post_is_refused(owner: TestClient) -> None:
    response = owner.post(
        "/key",
        data={"key": GOOD_KEY},
        headers={"sec-fetch-site": "cross-site", "origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert entries(owner) == 0


def _with(settings: Settings, **changes: str) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)


def test_rotate_then_rewrap_then_drop_the_old_kid(
    owner: TestClient, authn: SoftAuthenticator
) -> None:
    from keybroker.rotation import rewrap_all

    save(owner, authn, GOOD_KEY)
    ctx = get_context(owner)
    rotated, _ = ctx.ring.rotated()
    report = rewrap_all(ctx.engine, rotated)
    assert report.rewrapped["vault entries"] == 1
    assert not report.failed
    again = rewrap_all(ctx.engine, rotated)
    assert again.rewrapped["vault entries"] == 0
    assert again.current["vault entries"] == 1
    only_new = KeyRing.parse(rotated.serialize().split(",")[0])
    assert provider_keys.open_key(ctx.engine, only_new, owner_id(owner)) == GOOD_KEY


def test_kid_missing_from_ring_is_named(owner: TestClient, authn: SoftAuthenticator) -> None:
    from keybroker.crypto.keyring import UnknownKidError

    save(owner, authn, GOOD_KEY)
    ctx = get_context(owner)
    other = KeyRing.parse("k7:" + base64.b64encode(b"z" * 32).decode())
    with pytest.raises(UnknownKidError, match="'k1'"):
        provider_keys.open_key(ctx.engine, other, owner_id(owner))


def test_a_session_alone_saves_or_replaces_no_key(
    owner: TestClient, authn: SoftAuthenticator, upstream: Upstream
) -> None:
    checks = len(upstream.seen)
    for fields in ({}, {"ceremony": "x", "credential": "{}"}, {"credential": "not json"}):
        page = owner.post("/key", data={"key": GOOD_KEY, **fields}, headers=SAME_ORIGIN)
        assert page.status_code == 400
        assert entries(owner) == 0
    assert len(upstream.seen) == checks  # not even checked with OpenAI
    save(owner, authn, GOOD_KEY)
    replacement = "sk-test-" + "Z" * 40
    page = owner.post("/key", data={"key": replacement}, headers=SAME_ORIGIN)
    assert page.status_code == 400
    assert "sk-...GGGG" in page.text
    ctx = get_context(owner)
    assert provider_keys.open_key(ctx.engine, ctx.ring, owner_id(owner)) == GOOD_KEY
