from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from keybroker.crypto import tokens, vault
from keybroker.crypto.keyring import KeyRing

RING = KeyRing.parse("k1:" + base64.b64encode(b"m" * 32).decode())


def test_format() -> None:
    token = tokens.new_token(tokens.new_grant_id())
    text = str(token)
    assert text.startswith("sk-kb-")
    assert len(text) == tokens.TOKEN_LENGTH
    assert tokens.parse_token(text) == token
    assert token.secret not in repr(token)
    assert len(token.secret_hash) == 64
    assert tokens.secret_matches(token, token.secret_hash)


@given(st.data())
def test_any_changed_character_is_refused_by_the_checksum(data: st.DataObject) -> None:
    text = str(tokens.new_token(tokens.new_grant_id()))
    index = data.draw(st.integers(len(tokens.PREFIX), len(text) - 1))
    replacement = data.draw(st.sampled_from("0123456789abcdefABCDEFxyz"))
    changed = text[:index] + replacement + text[index + 1 :]
    if changed == text:
        return
    with pytest.raises(tokens.MalformedTokenError):
        tokens.parse_token(changed)


@given(st.text(max_size=120))
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(tokens.MalformedTokenError):
        tokens.parse_token(text)


@given(st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=200))
def test_grant_copy_round_trip(key: str) -> None:
    token = tokens.new_token(tokens.new_grant_id())
    sealed = tokens.seal_grant_copy(key, token, RING)
    assert tokens.open_grant_copy(sealed, token, RING) == key


def test_grant_copy_needs_the_token_secret() -> None:
    token = tokens.new_token(tokens.new_grant_id())
    sealed = tokens.seal_grant_copy("sk-test-secret", token, RING)
    wrong = tokens.new_token(token.grant_id)
    with pytest.raises(vault.SealedRecordError):
        tokens.open_grant_copy(sealed, wrong, RING)


def test_grant_copy_moved_to_another_grant_is_refused() -> None:
    token = tokens.new_token(tokens.new_grant_id())
    sealed = tokens.seal_grant_copy("sk-test-secret", token, RING)
    other = tokens.AppToken(tokens.new_grant_id(), token.secret)
    with pytest.raises(vault.SealedRecordError):
        tokens.open_grant_copy(sealed, other, RING)


def test_master_keys_alone_do_not_open_a_grant_copy() -> None:
    token = tokens.new_token(tokens.new_grant_id())
    sealed = tokens.seal_grant_copy("sk-test-secret", token, RING)
    inner = vault.open_sealed(
        sealed, RING, expected_binding=vault.Binding(token.grant_id, tokens.OUTER_USE)
    )
    assert b"sk-test-secret" not in inner


def test_rewrap_keeps_the_token_working() -> None:
    token = tokens.new_token(tokens.new_grant_id())
    sealed = tokens.seal_grant_copy("sk-test-secret", token, RING)
    rotated, _ = RING.rotated()
    moved = tokens.rewrap_grant_copy(sealed, token.grant_id, rotated)
    only_new = KeyRing.parse(rotated.serialize().split(",")[0])
    assert tokens.open_grant_copy(moved, token, only_new) == "sk-test-secret"


@given(st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_inner_key_is_rfc5869_hkdf(grant_id: str, secret: str) -> None:
    expected = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=grant_id.encode(), info=tokens._HKDF_INFO
    ).derive(secret.encode())
    assert tokens._inner_key(tokens.AppToken(grant_id, secret)) == expected
