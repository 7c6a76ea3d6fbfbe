"""Web app identities: a client_id is an origin exactly as ``URL.origin`` spells it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from keybroker.context import get_context
from keybroker.oauth.clients import find_client, origin_problem
from tests.helpers import authorize_query, pkce, redeem, register, save_key

CYRILLIC_A = "\u0430"
REFUSED = {
    f"https://{CYRILLIC_A}pple.com": "punycode",
    "https://APPLE.com": "lowercase",
    "HTTPS://apple.com": "lowercase",
    "https://apple.com.": "final dot",
    "https://apple.com:443": "default",
    "http://localhost:80": "default",
    "https://apple.com/": "path",
    "https://apple.com/app": "path",
    "https://user@apple.com": "user name",
    "https://user:pw@apple.com": "user name",
    "https://apple.com?x=1": "query",
    "https://apple.com#x": "fragment",
    "https://apple.com:0443": "leading zeros",
    "https://%61pple.com": "not a valid domain",
    "https://apple..com": "not a valid domain",
    "https://xn--zz.com": "punycode",
    "https://0x7f.1": "IPv4",
    "https://127.1": "IPv4",
    "http://apple.com": "https",
    "https://[::ffff:7f00:1]": "IPv6",
    "https://apple.com\\@evil.example": "backslash",
    "ftp://apple.com": "https://",
}
ACCEPTED = [
    "https://apple.com",
    "https://xn--pple-43d.com",
    "https://app.example:8443",
    "http://localhost:8000",
    "http://127.0.0.1:5555",
    "https://10.0.0.1",
]


@pytest.mark.parametrize(("client_id", "why"), REFUSED.items())
def test_a_second_spelling_or_look_alike_is_refused_with_a_reason(
    client: TestClient, client_id: str, why: str
) -> None:
    assert origin_problem(client_id) is not None
    assert find_client(get_context(client).engine, client_id) is None
    _, challenge = pkce()
    page = client.get(f"/authorize?{authorize_query(client_id, challenge)}", follow_redirects=False)
    assert page.status_code == 400
    assert "location" not in page.headers
    assert "not a canonical web origin" in page.text
    assert why in page.text
    if client_id.isascii():  # (an Origin header is ASCII) the token endpoint refuses it too
        assert redeem(client, "code", "v" * 43, client_id).status_code in (400, 401)


@pytest.mark.parametrize("client_id", ACCEPTED)
def test_canonical_origins_are_accepted(client: TestClient, client_id: str) -> None:
    assert origin_problem(client_id) is None
    found = find_client(get_context(client).engine, client_id)
    assert found is not None
    assert found.origin == client_id


def test_the_idn_consent_screen_shows_the_ascii_host_and_says_it_is_an_idn(
    client: TestClient,
) -> None:
    save_key(client, register(client))
    _, challenge = pkce()
    page = client.get(f"/authorize?{authorize_query('https://xn--pple-43d.com', challenge)}")
    assert page.status_code == 200
    assert '<strong class="app-host">xn--pple-43d.com</strong>' in page.text
    assert "internationalised" in page.text
    assert f"{CYRILLIC_A}pple.com" in page.text  # the Unicode reading, shown as a warning
    plain = client.get(f"/authorize?{authorize_query('https://apple.com', challenge)}").text
    assert '<strong class="app-host">apple.com</strong>' in plain
    assert "internationalised" not in plain


HOST_CHARS = st.sampled_from("aAz0-.:_é%/@[]")


@given(st.text(HOST_CHARS, min_size=1, max_size=16), st.sampled_from(["http", "https", "HTTPS"]))
def test_an_accepted_id_is_its_own_canonical_form(host: str, scheme: str) -> None:
    client_id = f"{scheme}://{host}"
    if origin_problem(client_id) is not None:
        return
    rest = client_id.split("://", 1)[1]
    assert client_id == client_id.lower()
    assert rest.isascii()
    assert not rest.endswith(".")
    assert not rest.endswith((":80", ":443")) or (scheme == "https" and rest.endswith(":80"))
    assert not any(c in rest for c in "/@%_?#\\")
