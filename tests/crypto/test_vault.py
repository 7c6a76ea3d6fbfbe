from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jwe
from joserfc.jwk import OctKey
from joserfc.util import urlsafe_b64decode

from keybroker.crypto import vault
from keybroker.crypto.keyring import KeyRing, UnknownKidError

RING = KeyRing.parse("k1:" + base64.b64encode(b"m" * 32).decode())
HERE = vault.Binding("user-1", "vault.openai")
keys = st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=200)


@given(keys)
def test_round_trip(key: str) -> None:
    sealed = vault.seal(key.encode(), RING, binding=HERE)
    if len(key) >= 8:  # shorter strings turn up in base64 by chance
        assert key.encode() not in sealed.encode()
    assert vault.open_sealed(sealed, RING, expected_binding=HERE) == key.encode()


def test_header_names_the_kid_and_binding() -> None:
    sealed = vault.seal(b"sk-x", RING, binding=HERE)
    assert vault.record_kid(sealed) == "k1"


def _segments(token: bytes) -> list[bytes] | None:
    try:
        return [urlsafe_b64decode(part) for part in token.split(b".")]
    except ValueError:
        return None


@given(st.data())
def test_any_flipped_byte_is_refused(data: st.DataObject) -> None:
    sealed = vault.seal(b"sk-test-flip", RING, binding=HERE).encode()
    index = data.draw(st.integers(0, len(sealed) - 1))
    tampered = bytearray(sealed)
    tampered[index] ^= data.draw(st.integers(1, 127))
    # A flip in a base64 character's unused low bits decodes to the same bytes: no change.
    if _segments(bytes(tampered)) == _segments(sealed):
        return
    with pytest.raises((vault.SealedRecordError, UnknownKidError)):
        vault.open_sealed(tampered.decode("latin-1"), RING, expected_binding=HERE)


@pytest.mark.parametrize(
    "elsewhere",
    [vault.Binding("user-2", "vault.openai"), vault.Binding("user-1", "grant-copy.outer")],
)
def test_record_moved_to_another_row_or_purpose_is_refused(elsewhere: vault.Binding) -> None:
    sealed = vault.seal(b"sk-test-move", RING, binding=HERE)
    with pytest.raises(vault.SealedRecordError, match="another"):
        vault.open_sealed(sealed, RING, expected_binding=elsewhere)


def test_only_our_algorithms_are_accepted() -> None:
    # Same key bytes, but alg=dir: a downgrade from key wrapping must be refused.
    header = {
        "alg": "dir",
        "enc": "A256GCM",
        "kid": "k1",
        "kb_sub": "user-1",
        "kb_use": "vault.openai",
    }
    forged = jwe.encrypt_compact(
        header, b"sk-x", OctKey.import_key(RING.key("k1")), registry=vault.DIRECT_REGISTRY
    )
    with pytest.raises(vault.SealedRecordError):
        vault.open_sealed(forged, RING, expected_binding=HERE)


def test_unknown_kid_is_named() -> None:
    other, _ = RING.rotated()
    sealed = vault.seal(b"sk-x", other, binding=HERE)
    with pytest.raises(UnknownKidError, match="'k2'"):
        vault.open_sealed(sealed, RING, expected_binding=HERE)


def test_rewrap_moves_to_the_active_kid() -> None:
    sealed = vault.seal(b"sk-x", RING, binding=HERE)
    rotated, _ = RING.rotated()
    moved = vault.rewrap(sealed, rotated, expected_binding=HERE)
    assert vault.record_kid(moved) == "k2"
    only_new = KeyRing.parse(rotated.serialize().split(",")[0])
    assert vault.open_sealed(moved, only_new, expected_binding=HERE) == b"sk-x"


def test_a_second_spelling_of_the_same_bytes_is_refused() -> None:
    # The tag's 22nd character carries 2 bits of the tag and 4 unused ones: setting an unused
    # bit spells the same bytes differently. A record has exactly one spelling.
    sealed = vault.seal(b"sk-x", RING, binding=HERE)
    head, tag = sealed.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = tag[:-1] + alphabet[alphabet.index(tag[-1]) ^ 1]
    lenient = base64.urlsafe_b64decode  # ignores the unused bits, as RFC 4648 §3.5 allows
    assert lenient(respelled + "==") == lenient(tag + "==")
    assert vault.open_sealed(sealed, RING, expected_binding=HERE) == b"sk-x"
    with pytest.raises(vault.SealedRecordError, match="canonical"):
        vault.open_sealed(f"{head}.{respelled}", RING, expected_binding=HERE)
