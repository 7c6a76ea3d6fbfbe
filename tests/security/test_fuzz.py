"""Fuzzing the token, revoke, grant and proxy endpoints (and /authorize): no 500, only clear
4xx answers, and nothing secret in them."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.helpers import GOOD_KEY

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
text = st.text(max_size=80)
header = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120)
fields = st.dictionaries(
    st.sampled_from(
        [
            "grant_type",
            "code",
            "code_verifier",
            "client_id",
            "redirect_uri",
            "token",
            "token_type_hint",
            "scope",
        ]
    ),
    text,
    max_size=6,
)


def clean(response: object) -> None:
    status = response.status_code  # type: ignore[attr-defined]
    assert 200 <= status < 500, (status, response.text)  # type: ignore[attr-defined]
    assert GOOD_KEY not in response.text  # type: ignore[attr-defined]
    assert "Traceback" not in response.text  # type: ignore[attr-defined]


@FUZZ
@given(
    form=fields,
    origin=st.one_of(
        st.none(), st.sampled_from(["http://127.0.0.1:5555", "https://evil.example", "null"])
    ),
)
def test_token_endpoint(client: TestClient, form: dict[str, str], origin: str | None) -> None:
    headers = {"origin": origin} if origin else {}
    response = client.post("/oauth/token", data=form, headers=headers)
    clean(response)
    assert response.status_code != 200
    assert "error" in response.json()


@FUZZ
@given(form=fields)
def test_revoke_endpoint(client: TestClient, form: dict[str, str]) -> None:
    clean(client.post("/oauth/revoke", data=form))


@FUZZ
@given(auth=header)
def test_grant_endpoint(client: TestClient, auth: str) -> None:
    response = client.get("/api/grant", headers={"authorization": auth})
    clean(response)
    assert response.status_code == 401


@FUZZ
@given(
    segments=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4),
    auth=header,
    body=st.binary(max_size=300),
    content_type=st.sampled_from(
        [
            "application/json",
            "multipart/form-data; boundary=x",
            "text/plain",
            "application/x-www-form-urlencoded",
        ]
    ),
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]),
)
def test_proxy(
    client: TestClient, segments: list[str], auth: str, body: bytes, content_type: str, method: str
) -> None:
    path = "/v1/" + "/".join(quote(s, safe="") for s in segments)
    response = client.request(
        method, path, content=body, headers={"authorization": auth, "content-type": content_type}
    )
    clean(response)
    assert response.status_code in (401, 404)
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(
            [
                "response_type",
                "client_id",
                "redirect_uri",
                "scope",
                "state",
                "code_challenge",
                "code_challenge_method",
                "response_mode",
                "models",
                "budget",
                "rpm",
                "expires_in_days",
            ]
        ),
        text,
        max_size=10,
    )
)
def test_authorize_endpoint(client: TestClient, params: dict[str, str]) -> None:
    response = client.get(f"/authorize?{urlencode(params)}", follow_redirects=False)
    clean(response)
    if response.status_code in (301, 302, 303, 307):
        # Only ever to a registered redirect URI; no client is registered here.
        raise AssertionError(f"redirected to {response.headers['location']}")


device_fields = st.dictionaries(
    st.sampled_from(
        ["client_id", "scope", "models", "budget", "rpm", "expires_in_days", "device_code"]
    ),
    text,
    max_size=6,
)


@FUZZ
@given(form=device_fields, grant=st.booleans())
def test_device_endpoints(client: TestClient, form: dict[str, str], grant: bool) -> None:
    # The device authorization endpoint, and polling with the device grant type.
    if grant:
        form = {**form, "grant_type": "urn:ietf:params:oauth:grant-type:device_code"}
    response = client.post("/oauth/token" if grant else "/oauth/device_authorization", data=form)
    clean(response)
    assert response.status_code != 200  # no device client is registered here
    assert "error" in response.json()


@FUZZ
@given(code=text, request_id=st.text(max_size=60), query=text)
def test_device_pages(client: TestClient, code: str, request_id: str, query: str) -> None:
    same_origin = {"origin": "http://localhost:8000", "sec-fetch-site": "same-origin"}
    entered = client.post("/device", data={"user_code": code}, headers=same_origin)
    clean(entered)
    assert entered.status_code in (400, 429)
    clean(client.get(f"/device?{urlencode({'user_code': query})}"))
    clean(client.get(f"/device/request/{quote(request_id, safe='')}"))
    # A made-up binding cookie: back to code entry, never a consent screen.
    cookie = {"cookie": f"kb_device={quote(request_id, safe='')}.{quote(query, safe='')}"}
    bound = client.get("/device/request", headers=cookie, follow_redirects=False)
    clean(bound)
    assert bound.status_code == 303
