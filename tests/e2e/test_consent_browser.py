"""The popup consent flow in Chromium: the demo app (127.0.0.1) and the broker (localhost) on
different origins, with virtual authenticators in each window."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect

from tests.e2e.conftest import CHROMIUM, FLAGS, Window, attach_authenticator
from tests.e2e.loopback import Callback, register_app
from tests.helpers import authorize_query, pkce
from tests.live import LiveBroker

KEY = "sk-test-consent-" + "C" * 32


def open_popup(page: Page) -> Window:
    with page.expect_popup() as info:
        page.get_by_role("button", name="Sign in with OpenAI").click()
    popup = info.value
    popup.set_default_timeout(15_000)
    return attach_authenticator(popup)


def first_time(page: Page, demo: str) -> tuple[Window, list[dict[str, Any]]]:
    page.goto(demo)
    popup = open_popup(page)
    expect(popup.page.get_by_text("The web app at")).to_be_visible()
    expect(popup.page.locator(".app-name")).to_have_text(demo)
    popup.page.get_by_role("button", name="Create passkey").click()
    popup.page.get_by_label("OpenAI API key").fill(KEY)
    popup.page.get_by_role("button", name="Save key").click()
    expect(popup.page.get_by_role("heading", name="Allow access?")).to_be_visible()
    return popup, popup.credentials()


def allow(popup: Window) -> None:
    with popup.page.expect_event("close"):
        popup.page.get_by_role("button", name="Allow").click()


def result(page: Page) -> Any:
    return page.evaluate("() => window.keybrokerResult")


def test_first_time_then_returning_person(
    context: BrowserContext, browser: Browser, broker: LiveBroker, demo: str
) -> None:
    page = context.new_page()
    popup, credentials = first_time(page, demo)
    allow(popup)
    access = result(page)
    assert access["apiKey"].startswith("sk-kb-")
    assert access["baseURL"] == f"{broker.url}/v1"
    expect(page.get_by_role("status")).to_contain_text("Signed in")

    # The demo's official openai npm SDK streams an answer through the proxy (CORS included).
    page.get_by_label("Message").fill("chunks:8 pace:60")
    page.get_by_role("button", name="Send").click()
    answer = page.get_by_role("log")
    expect(answer).to_have_attribute("data-done", "true")
    expect(answer).to_have_text("w0 w1 w2 w3 w4 w5 w6 w7 ")
    assert answer.get_attribute("data-chunks") == "8"

    # A returning person in a fresh browser profile: passkey sign-in, no key prompt.
    other = browser.new_context()
    try:
        page2 = other.new_page()
        page2.goto(demo)
        popup2 = open_popup(page2)
        for credential in credentials:
            # The same authenticator, whose counter has moved on since the copy was taken
            # (the "Allow" assertion in the first window used it once more).
            popup2.add_credential({**credential, "signCount": credential["signCount"] + 5})
        popup2.page.get_by_role("button", name="Sign in with passkey").click()
        expect(popup2.page.get_by_role("heading", name="Allow access?")).to_be_visible()
        expect(popup2.page.get_by_label("OpenAI API key")).to_have_count(0)
        allow(popup2)
        second = result(page2)
        assert second["apiKey"].startswith("sk-kb-")
        assert second["apiKey"] != access["apiKey"]
    finally:
        other.close()


def test_deny_rejects_with_access_denied(context: BrowserContext, demo: str) -> None:
    page = context.new_page()
    popup, _ = first_time(page, demo)
    popup.page.get_by_role("button", name="Deny").click()
    page.wait_for_function("() => window.keybrokerError === 'access_denied'")
    expect(page.get_by_role("status")).to_contain_text("access_denied")
    popup.page.wait_for_event("close") if not popup.page.is_closed() else None


def test_closing_the_popup_rejects_within_two_seconds(context: BrowserContext, demo: str) -> None:
    page = context.new_page()
    page.goto(demo)
    popup = open_popup(page)
    expect(popup.page.get_by_role("button", name="Create passkey")).to_be_visible()
    popup.page.close()
    started = time.monotonic()
    page.wait_for_function("() => window.keybrokerError === 'popup_closed'", timeout=2_000)
    assert time.monotonic() - started < 2


def test_messages_from_elsewhere_or_with_a_wrong_state_are_ignored(
    context: BrowserContext, demo: str, broker: LiveBroker
) -> None:
    page = context.new_page()
    popup, _ = first_time(page, demo)
    state = parse_qs(urlsplit(popup.page.url).query)["state"][0]
    # From the app's own origin (not the broker) with the right state:
    page.evaluate(
        """(state) => window.postMessage({type: "authorization_response",
        code: "forged", state, iss: location.origin}, "*")""",
        state,
    )
    # From the broker's window, with a wrong state:
    popup.page.evaluate(
        """(demo) => window.opener.postMessage({type: "authorization_response",
        code: "forged", state: "wrong"}, demo)""",
        demo,
    )
    page.wait_for_timeout(500)  # give a wrongly accepted message time to show (it must not)
    assert page.evaluate("() => window.keybrokerError === undefined && !window.keybrokerAccess")
    allow(popup)  # the real answer still settles the same promise
    assert result(page)["apiKey"].startswith("sk-kb-")


def test_blocked_popup_rejects_with_popup_blocked(
    playwright: Playwright, broker: LiveBroker, demo: str
) -> None:
    # Playwright turns popup blocking off by default; this browser keeps Chromium's blocker.
    # evaluate() counts as a user gesture, so a first window.open uses up the activation
    # and the SDK's popup is then blocked, as it is for a call outside a click handler.
    strict = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=FLAGS,
        headless=True,
        ignore_default_args=["--disable-popup-blocking"],
    )
    try:
        page = strict.new_page()
        page.goto(demo)
        code = page.evaluate(
            """(broker) => { window.open("about:blank", "first");
            return Keybroker.requestOpenAIAPI({broker, timeoutMs: 5000})
                .then(() => "resolved", (e) => e.code); }""",
            broker.url,
        )
        assert code == "popup_blocked"
    finally:
        strict.close()


def test_command_line_app_loopback_redirect(
    context: BrowserContext, window: Window, broker: LiveBroker
) -> None:
    # The CLI app: registered once, then a loopback server on a port of its choosing.
    client_id = register_app(broker, "Test CLI")
    callback = Callback()
    redirect = callback.redirect_uri
    verifier, challenge = pkce()
    query = authorize_query(client_id, challenge, redirect_uri=redirect, scope="chat")

    page = window.page
    page.goto(f"{broker.url}/authorize?{query}")
    expect(page.locator(".app-name")).to_have_text("Test CLI")
    page.get_by_role("button", name="Create passkey").click()
    page.get_by_label("OpenAI API key").fill(KEY)
    page.get_by_role("button", name="Save key").click()
    page.get_by_role("button", name="Allow").click()
    expect(page.get_by_text("You can close this window")).to_be_visible()
    callback.close()

    params = callback.params
    assert params["state"] == ["st-123"]
    assert params["iss"] == [broker.url]
    token = httpx.post(
        f"{broker.url}/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"][0],
            "client_id": client_id,
            "code_verifier": verifier,
            "redirect_uri": redirect,
        },
    )
    assert token.status_code == 200, token.text
    assert token.json()["access_token"].startswith("sk-kb-")
    assert token.json()["scope"] == "chat"


@pytest.mark.parametrize("path", ["/authorize?client_id=nope", "/settings", "/signin", "/"])
def test_pages_refuse_framing(broker: LiveBroker, path: str) -> None:
    response = httpx.get(f"{broker.url}{path}", follow_redirects=True)
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
