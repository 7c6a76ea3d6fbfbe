"""Security headers on every HTML response, cookie attributes, and the abuse limits."""

from __future__ import annotations

from dataclasses import replace

import pytest
from starlette.testclient import TestClient

from keybroker.app import create_app
from keybroker.settings import Settings
from tests.helpers import (
    APP,
    SAME_ORIGIN,
    authorize_query,
    pkce,
    post_key,
    register,
    save_key,
)
from tests.upstream import Upstream


def assert_hardened(response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cross-origin-opener-policy"] in ("same-origin", "unsafe-none")


def test_every_html_page_is_hardened(client: TestClient) -> None:
    _, challenge = pkce()
    pages = [
        "/",
        "/signin",
        f"/authorize?{authorize_query(APP, challenge)}",
        "/authorize?client_id=unknown",
    ]
    for path in pages:
        assert_hardened(client.get(path))
    save_key(client, register(client))
    for path in [
        "/settings",
        "/key",
        "/key/delete",
        "/settings/activity",
        f"/authorize?{authorize_query(APP, challenge)}",
    ]:
        response = client.get(path)
        assert response.headers["content-type"].startswith("text/html"), path
        assert_hardened(response)
    # Only the popup's pages keep the opener (COOP unsafe-none); the rest are isolated.
    assert client.get("/settings").headers["cross-origin-opener-policy"] == "same-origin"
    assert (
        client.get(f"/authorize?{authorize_query(APP, challenge)}").headers[
            "cross-origin-opener-policy"
        ]
        == "unsafe-none"
    )


def test_session_cookie_attributes_over_https(settings: Settings) -> None:
    secure = replace(settings, public_url="https://localhost")
    with TestClient(create_app(secure), base_url="https://localhost") as client:
        start = client.post(
            "/auth/register/options", json={}, headers={"sec-fetch-site": "same-origin"}
        ).json()
        from tests.softauthn import SoftAuthenticator

        authn = SoftAuthenticator(origin="https://localhost")
        done = client.post(
            "/auth/register/verify",
            headers={"sec-fetch-site": "same-origin"},
            json={"ceremony": start["ceremony"], "credential": authn.create(start["publicKey"])},
        )
        cookie = done.headers["set-cookie"]
        assert cookie.startswith("__Host-kb_session=")
        for attribute in ("HttpOnly", "Secure", "SameSite=lax", "Path=/"):
            assert attribute.lower() in cookie.lower()
        assert "strict-transport-security" in client.get("/").headers


@pytest.fixture
def strict(settings: Settings) -> TestClient:
    # Limits at a tenth of production so the test stays short: 6 ceremonies a minute per IP,
    # 1 key check per account, 12 token requests.
    return TestClient(
        create_app(replace(settings, abuse_limit_scale=0.1)), base_url="http://localhost:8000"
    )


def test_passkey_ceremonies_are_limited_per_ip(strict: TestClient) -> None:
    with strict as client:
        statuses = [
            client.post("/auth/login/options", json={}, headers=SAME_ORIGIN).status_code
            for _ in range(8)
        ]
    assert statuses[:6] == [200] * 6
    assert statuses[6:] == [429, 429]


def test_key_checks_are_limited_so_the_broker_is_no_key_oracle(
    strict: TestClient, upstream: Upstream
) -> None:
    with strict as client:
        authn = register(client)
        checks_before = sum(1 for s in upstream.seen if s.path == "/v1/models")
        first = post_key(client, authn, "sk-test-bad-" + "a" * 30)
        assert "OpenAI rejected this key" in first.text
        second = post_key(client, authn, "sk-test-bad-" + "b" * 30)
        assert second.status_code == 429
        assert "Too many attempts" in second.text
        # The refused attempt never reached the upstream.
        assert sum(1 for s in upstream.seen if s.path == "/v1/models") == checks_before + 1


def test_token_endpoint_is_limited_per_ip(strict: TestClient) -> None:
    with strict as client:
        answers = [
            client.post(
                "/oauth/token",
                data={"grant_type": "authorization_code", "code": "x", "client_id": APP},
            )
            for _ in range(14)
        ]
    assert [a.status_code for a in answers[:12]] == [400] * 12
    assert answers[12].status_code == 429
    assert answers[12].json()["error"] == "slow_down"
    assert int(answers[12].headers["retry-after"]) >= 1


def test_metrics_need_the_bearer_token_when_one_is_set(settings: Settings) -> None:
    token = "metrics-" + "m" * 32
    with TestClient(
        create_app(replace(settings, metrics_token=token)), base_url="http://localhost:8000"
    ) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": token}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert "keybroker_" not in refused.text
            assert token not in refused.text
        scraped = client.get("/metrics", headers={"authorization": f"Bearer {token}"})
        assert scraped.status_code == 200
        assert "keybroker_proxy_responses_total" in scraped.text
    with TestClient(create_app(settings), base_url="http://localhost:8000") as client:
        assert client.get("/metrics").status_code == 200  # no token set: a private port's job
