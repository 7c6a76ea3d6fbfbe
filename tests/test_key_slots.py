"""Passkey key slots (PRF): strict custody, several PRF passkeys, passkeys without PRF."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session
from starlette.testclient import TestClient

from keybroker import provider_keys
from keybroker.context import get_context
from keybroker.crypto import tokens, vault
from keybroker.crypto.keyring import KeyRing, UnknownKidError
from keybroker.models import Grant, KeySlot, Passkey, User, VaultEntry
from tests import helpers
from tests.helpers import (
    GOOD_KEY,
    confirmed,
    grant_token,
    post_key,
    register,
    save_key,
)
from tests.softauthn import SoftAuthenticator


def assert_nothing_opens(engine: Engine, ring: KeyRing, key: str) -> None:
    """Every decryption path a holder of the database and the master keys has, tried."""
    with Session(engine) as db:
        user = db.execute(select(User.id)).scalars().first()
        assert user is not None
        with pytest.raises(provider_keys.VaultLockedError):
            provider_keys.open_key(engine, ring, user)
        entry = db.execute(select(VaultEntry)).scalar_one()
        slots = list(db.execute(select(KeySlot)).scalars())
        grants = list(db.execute(select(Grant)).scalars())
    assert entry.sealed is None  # no master slot
    assert entry.kid is None
    uses = (
        "vault.openai",
        "vault.openai.content",
        "vault.openai.master-slot",
        "vault.openai.passkey-slot",
        "grant-copy.outer",
        "grant-copy.inner",
    )
    subjects = [entry.user_id, *(s.passkey_id for s in slots), *(g.id for g in grants)]
    master_keys = [ring.key(k) for k in ring.kids]
    for sealed in [entry.content, *(s.wrapped for s in slots), *(g.sealed_copy for g in grants)]:
        assert sealed is not None
        assert key not in sealed
        for subject in subjects:
            for use in uses:
                binding = vault.Binding(subject, use)
                for master in master_keys:  # the master keys used directly as content keys
                    with pytest.raises(vault.SealedRecordError):
                        vault.open_direct(sealed, master, expected_binding=binding)
                try:
                    opened = vault.open_sealed(sealed, ring, expected_binding=binding)
                except (vault.SealedRecordError, UnknownKidError):
                    continue
                # Only a grant copy's outer layer opens; it holds the inner layer alone.
                assert key.encode() not in opened
                for master in master_keys:
                    with pytest.raises(vault.SealedRecordError):
                        vault.open_direct(opened.decode(), master, expected_binding=binding)


def prf_authenticator() -> SoftAuthenticator:
    return SoftAuthenticator(prf_secret=os.urandom(32))


def add_passkey(
    client: TestClient, authn: SoftAuthenticator, confirm_with: SoftAuthenticator
) -> dict[str, object]:
    response = helpers.add_passkey(client, authn, confirm_with)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def slots(client: TestClient) -> int:
    with Session(get_context(client).engine) as db:
        return len(list(db.execute(select(KeySlot)).scalars()))


def user_id(client: TestClient) -> str:
    with Session(get_context(client).engine) as db:
        return db.execute(select(User.id)).scalar_one()


def test_registration_records_prf_support(client: TestClient) -> None:
    register(client, prf_authenticator())
    with Session(get_context(client).engine) as db:
        assert db.execute(select(Passkey.prf_supported)).scalar_one() is True


def test_strict_custody_database_and_master_keys_open_nothing(client: TestClient) -> None:
    owner = register(client, prf_authenticator())
    save_key(client, owner)
    old_token = grant_token(client, owner)["access_token"]  # consent adds the passkey's slot
    assert slots(client) == 1
    strict = confirmed(client, owner, "/settings/custody", {"strict": True})
    assert strict.status_code == 200, strict.text
    assert "Strict custody" in client.get("/settings").text

    # Holding the database and the master keys: try every decryption path.
    ctx = get_context(client)
    assert_nothing_opens(ctx.engine, ctx.ring, GOOD_KEY)

    # With the owner's passkey the key opens: a new app is allowed and works; the old one too.
    new_token = grant_token(client, owner)["access_token"]
    for token in (old_token, new_token):
        assert (
            client.get("/v1/models", headers={"authorization": f"Bearer {token}"}).status_code
            == 200
        )
    # Replacing the key needs master-key custody back.
    refused = post_key(client, owner, "sk-test-" + "N" * 40)
    assert refused.status_code == 409
    assert "strict custody" in refused.text


def test_two_prf_passkeys_each_open_and_removing_one_leaves_the_other(
    client: TestClient,
) -> None:
    first = register(client, prf_authenticator())
    save_key(client, first)
    second = prf_authenticator()
    assert add_passkey(client, second, confirm_with=first)["key_slot"] is True  # master slot
    grant_token(client, first)  # the first passkey gets its slot at consent
    assert slots(client) == 2
    assert confirmed(client, second, "/settings/custody", {"strict": True}).status_code == 200
    ctx = get_context(client)
    with Session(ctx.engine) as db:
        keys = {p.credential_id: p for p in db.execute(select(Passkey)).scalars()}
    for authn in (first, second):
        token = grant_token(client, authn)["access_token"]
        assert (
            client.get("/v1/models", headers={"authorization": f"Bearer {token}"}).status_code
            == 200
        )
    # A third passkey in strict custody: an existing passkey opens the vault for its slot.
    third = prf_authenticator()
    assert add_passkey(client, third, confirm_with=first)["key_slot"] is True
    first_id = keys[first.credential_id_b64].id
    removed = confirmed(client, second, f"/settings/passkeys/{first_id}/remove")
    assert removed.status_code == 200
    token = grant_token(client, second)["access_token"]
    assert client.get("/v1/models", headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert tokens.parse_token(token)


def test_passkey_without_prf_keeps_master_custody_and_strict_is_refused(
    client: TestClient,
) -> None:
    plain = register(client)  # no PRF
    save_key(client, plain)
    grant_token(client, plain)
    assert slots(client) == 0
    page = client.get("/settings").text
    assert "Master-key custody" in page
    assert "not supported" in page
    refused = confirmed(client, plain, "/settings/custody", {"strict": True})
    assert refused.status_code == 409
    assert "PRF" in refused.json()["error"]
    assert "First passkey" in refused.json()["error"]


def test_last_slot_in_strict_custody_needs_key_deletion_confirmed(client: TestClient) -> None:
    owner = register(client, prf_authenticator())
    save_key(client, owner)
    grant_token(client, owner)
    confirmed(client, owner, "/settings/custody", {"strict": True})
    other = SoftAuthenticator()  # no PRF: a passkey that cannot hold a slot
    add_passkey(client, other, confirm_with=owner)
    with Session(get_context(client).engine) as db:
        mine = db.execute(
            select(Passkey).where(Passkey.credential_id == owner.credential_id_b64)
        ).scalar_one()  # type: ignore[arg-type]
    refused = confirmed(client, other, f"/settings/passkeys/{mine.id}/remove")
    assert refused.status_code == 409
    assert "deletes your OpenAI key" in refused.json()["error"]
    assert refused.json()["code"] == "confirm_delete_key"  # the page asks, then retries
    done = confirmed(client, other, f"/settings/passkeys/{mine.id}/remove", {"delete_key": True})
    assert done.status_code == 200
    assert provider_keys.stored_key(get_context(client).engine, user_id(client)) is None


def test_a_refused_passkey_removal_deletes_nothing(client: TestClient) -> None:
    owner = register(client, prf_authenticator())
    save_key(client, owner)
    grant_token(client, owner)
    confirmed(client, owner, "/settings/custody", {"strict": True})
    with Session(get_context(client).engine) as db:
        only = db.execute(select(Passkey)).scalar_one()
    refused = confirmed(client, owner, f"/settings/passkeys/{only.id}/remove", {"delete_key": True})
    assert refused.status_code == 409
    assert "only passkey" in refused.json()["error"]
    # The key survives a removal that did not happen.
    assert provider_keys.stored_key(get_context(client).engine, user_id(client)) is not None
