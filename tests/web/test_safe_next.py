"""safe_next: only a path on the broker passes, whatever a link carries."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keybroker.web.http import safe_next

BASE = "https://broker.example/signin"


def browser_resolves(value: str) -> str:
    """The netloc a browser would go to for ``value``: the WHATWG URL parser drops tabs and
    newlines anywhere and leading/trailing C0 controls and spaces, and reads "\\" as "/"."""
    cleaned = value.strip("".join(map(chr, range(0x21)))).translate({9: None, 10: None, 13: None})
    return urlsplit(urljoin(BASE, cleaned.replace("\\", "/"))).netloc


@pytest.mark.parametrize(
    "value",
    [
        "/\t/evil.example",
        "/\\evil.example",
        "//evil.example",
        "%2F%2Fevil.example",
        "https://evil.example",
        "javascript:alert(1)",
        "/\n/evil.example",
        "/ /evil.example",
        "\\\\evil.example",
        "/.//evil.example",
        "/%2e%2e//evil.example",
        "/%2E/x",
        "/a/../b",
        "/\u3000/evil.example",
        "/\x7f/evil.example",
        "",
        None,
        "settings",
        "/" + "a" * 5000,
    ],
)
def test_anything_but_a_plain_path_falls_back(value: str | None) -> None:
    assert safe_next(value, "/fallback") == "/fallback"


@pytest.mark.parametrize(
    "value",
    [
        "/settings",
        "/settings/activity?page=2",
        "/authorize?client_id=https://app.example&state=x//y",
        "/key?next=/settings#top",
    ],
)
def test_paths_on_the_broker_pass(value: str) -> None:
    assert safe_next(value, "/fallback") == value


@given(st.text(alphabet=st.sampled_from("/\\.%2eEfF:@ \t\n?#a"), max_size=12))
def test_whatever_passes_stays_on_the_broker(value: str) -> None:
    result = safe_next(value, "/fallback")
    assert browser_resolves(result) == "broker.example", (value, result)
