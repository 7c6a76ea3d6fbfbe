"""The leak test: a full browser run with a recognisable fake key, then every database file,
log line, HTML page and HTTP response is searched for the key and for token secrets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import BrowserContext, Response, expect

from keybroker.crypto import tokens
from keybroker.demo import create_demo_app
from tests.e2e.conftest import Window, load_until
from tests.e2e.test_consent_browser import open_popup
from tests.live import LiveBroker
from tests.upstream import Upstream, serve_in_thread

CANARY = "sk-test-LEAKCANARY-" + "7f3a9c" * 6


@pytest.fixture
def fresh(own_broker: LiveBroker) -> Iterator[tuple[LiveBroker, str]]:
    server, demo = serve_in_thread(create_demo_app(own_broker.url))
    yield own_broker, demo
    server.should_exit = True


def test_no_key_or_token_secret_leaks(
    context: BrowserContext, window: Window, fresh: tuple[LiveBroker, str], upstream: Upstream
) -> None:
    broker, demo = fresh
    bodies: list[tuple[str, str]] = []

    def keep(response: Response) -> None:
        # Read at once: a body is gone once its page has navigated on.
        try:
            bodies.append((response.url, response.body().decode("utf-8", "replace")))
        except Exception:  # redirects and aborted requests have no body
            bodies.append((response.url, ""))

    context.on("response", keep)

    page = window.page
    page.goto(demo)
    popup = open_popup(page)
    popup.page.get_by_role("button", name="Create passkey").click()
    popup.page.get_by_label("OpenAI API key").fill(CANARY)
    popup.page.get_by_role("button", name="Save key").click()
    with popup.page.expect_event("close"):
        popup.page.get_by_role("button", name="Allow").click()
    token = page.evaluate("() => window.keybrokerResult")["apiKey"]
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("log")).to_have_attribute("data-done", "true")
    settings = context.new_page()
    for path in ("/settings", "/key", "/settings/activity", "/"):
        settings.goto(f"{broker.url}{path}")
    grant_id = tokens.parse_token(token).grant_id
    request_row = settings.get_by_text("POST /v1/chat/completions")
    load_until(
        settings, f"{broker.url}/settings/grants/{grant_id}/requests", request_row.is_visible
    )
    expect(request_row).to_be_visible()

    secret = tokens.parse_token(token).secret
    # The owner's key did reach the upstream, so the run is real.
    assert any(s.headers.get("authorization") == f"Bearer {CANARY}" for s in upstream.seen)

    urls = {url.split("?")[0] for url, _ in bodies}
    for expected in ("/authorize", "/oauth/token", "/v1/chat/completions", "/settings", "/key"):
        assert any(u.endswith(expected) for u in urls), (expected, urls)
    for url, body in bodies:
        assert CANARY not in body, url
        assert CANARY[8:] not in body, url
        if not url.endswith("/oauth/token"):  # the one answer that hands the token over
            assert secret not in body, url
    for path in broker.data_dir.rglob("*"):
        if path.is_file() and path.name != "server.log":
            data = path.read_bytes()
            assert CANARY.encode() not in data, path
            assert CANARY[8:].encode() not in data, path
            assert secret.encode() not in data, path
    logs = broker.logs()
    assert CANARY not in logs
    assert secret not in logs
    assert token not in logs
