from __future__ import annotations

import base64

import pytest

from keybroker.crypto.keyring import KeyRing, KeyRingError, UnknownKidError

K1 = base64.b64encode(b"1" * 32).decode()
K0 = base64.b64encode(b"0" * 32).decode()


def test_first_kid_is_active() -> None:
    ring = KeyRing.parse(f"k1:{K1}, k0:{K0}")
    assert ring.kids == ("k1", "k0")
    assert ring.active_kid == "k1"
    assert ring.key("k0") == b"0" * 32


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        (K1, "no 'kid:' prefix"),
        (f"bad kid!:{K1}", "kid must be"),
        (f"k1:{K1},k1:{K0}", "twice"),
        ("k1:not base64!!", "not valid base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "must be 32 bytes"),
    ],
)
def test_malformed_ring_names_the_problem_never_the_key(text: str, fragment: str) -> None:
    with pytest.raises(KeyRingError, match=fragment) as info:
        KeyRing.parse(text)
    assert K1 not in str(info.value)
    assert K0 not in str(info.value)


def test_unknown_kid_names_the_kid() -> None:
    with pytest.raises(UnknownKidError, match="'k9'"):
        KeyRing.parse(f"k1:{K1}").key("k9")


def test_rotation_adds_a_new_active_kid_and_keeps_the_old() -> None:
    ring = KeyRing.parse(f"k1:{K1}")
    rotated, text = ring.rotated()
    assert rotated.kids == ("k2", "k1")
    assert KeyRing.parse(text).key("k1") == ring.key("k1")
    assert rotated.key("k2") != ring.key("k1")
    assert "k2" not in repr(rotated.key("k2"))
    assert K1 not in repr(rotated)
