"""Settings in Chromium: two apps granted through the popup and used through the proxy, then
revoke, budget change, screenshots and account deletion, on a broker of its own."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from keybroker.demo import create_demo_app
from tests.e2e.conftest import Window, attach_authenticator, load_until, owner_with_key
from tests.e2e.test_consent_browser import open_popup
from tests.live import LiveBroker
from tests.upstream import serve_in_thread

KEY = "sk-test-settings-" + "S" * 32
TABLES = [
    "users",
    "key_slots",
    "passkeys",
    "sessions",
    "vault_entries",
    "authorization_codes",
    "grants",
    "usage",
    "audit_events",
    "challenges",
]


@pytest.fixture
def two_apps(own_broker: LiveBroker) -> Iterator[list[str]]:
    servers = [serve_in_thread(create_demo_app(own_broker.url)) for _ in range(2)]
    yield [url for _, url in servers]
    for server, _ in servers:
        server.should_exit = True


def grant_app(
    context: BrowserContext, demo: str, credentials: list[dict[str, Any]], uses: int
) -> str:
    """``uses``: how often this authenticator signed since ``credentials`` were read."""
    page = context.new_page()
    page.goto(demo)
    popup = open_popup(page)
    for credential in credentials:
        popup.add_credential({**credential, "signCount": credential["signCount"] + uses})
    expect(popup.page.get_by_role("heading", name="Allow access?")).to_be_visible()
    popup.page.get_by_label("Models it may use").fill("")  # the owner widens it to any model
    with popup.page.expect_event("close"):
        popup.page.get_by_role("button", name="Allow").click()
    token: str = page.evaluate("() => window.keybrokerResult")["apiKey"]
    page.close()
    return token


def spend(broker: LiveBroker, token: str, times: int = 1) -> None:
    with openai.OpenAI(api_key=token, base_url=f"{broker.url}/v1", max_retries=0) as client:
        for _ in range(times):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "tokens:1000"}]
            )


def card(page: Page, origin: str) -> Any:
    return page.get_by_role("article", name=origin)


def rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def test_settings_controls_every_app(
    context: BrowserContext,
    window: Window,
    own_broker: LiveBroker,
    two_apps: list[str],
    screenshots: Path,
) -> None:
    broker = own_broker
    page = window.page
    owner_with_key(page, broker, KEY)
    credentials = window.credentials()

    app_a, app_b = two_apps
    token_a = grant_app(context, app_a, credentials, uses=0)
    token_b = grant_app(context, app_b, credentials, uses=1)
    window.bump_sign_count(10)  # the popups used copies of this passkey
    spend(broker, token_a, 2)
    spend(broker, token_b, 1)

    load_until(
        page,
        f"{broker.url}/settings",
        lambda: card(page, app_b).locator(".requests").text_content() == "1",
    )
    expect(card(page, app_a).locator(".requests")).to_have_text("2")
    expect(card(page, app_b).locator(".requests")).to_have_text("1")
    # 2 x (10 input + 1,000 output tokens of gpt-4o) = $0.02005.
    expect(card(page, app_a).locator(".spend")).to_have_text("$0.02")
    expect(card(page, app_b).locator(".spend")).to_have_text("$0.01")
    expect(card(page, app_a).get_by_role("img")).to_have_attribute(
        "aria-label", "Spend per day over the last 30 days, $0.0200 in all; highest day $0.0200"
    )

    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(screenshots / "settings-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(screenshots / "settings-phone.png"), full_page=True)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    page.set_viewport_size({"width": 1280, "height": 900})

    # Revoke A: its next request is refused, B keeps working.
    page.get_by_role("button", name=f"Revoke access for {app_a}").click()
    expect(page.get_by_role("status").first).to_contain_text(f"Access for {app_a} is revoked.")
    with pytest.raises(openai.AuthenticationError):
        spend(broker, token_a)
    spend(broker, token_b)

    # B's budget below its spend: 429 insufficient_quota; raised again: through.
    def set_budget(value: str) -> None:
        card(page, app_b).get_by_text("Change limits").click()
        card(page, app_b).get_by_label("Monthly budget (USD)").fill(value)
        card(page, app_b).get_by_role("button", name=f"Save limits for {app_b}").click()
        expect(page.get_by_role("status").first).to_contain_text(f"Limits for {app_b} changed.")

    set_budget("0.01")
    with pytest.raises(openai.RateLimitError) as info:
        spend(broker, token_b)
    assert info.value.code == "insufficient_quota"
    set_budget("5")
    spend(broker, token_b)

    # Delete the account, confirmed with the passkey: no row of this person is left.
    database = broker.data_dir / "keybroker.db"
    assert rows(database)["users"] == 1
    page.get_by_role("button", name="Delete account").click()
    expect(page).to_have_url(f"{broker.url}/?deleted=1")
    left = rows(database)
    assert left == dict.fromkeys(TABLES, 0), left
    for token in (token_a, token_b):
        with pytest.raises(openai.AuthenticationError):
            spend(broker, token)
    page.goto(f"{broker.url}/settings")
    expect(page).to_have_url(f"{broker.url}/signin?next=/settings")


def test_cross_site_form_post_from_a_real_page_is_refused(
    context: BrowserContext, own_broker: LiveBroker, two_apps: list[str]
) -> None:
    # A page on another origin auto-submits a form to the broker: the browser sends the
    # session cookie only if SameSite allows, and Sec-Fetch-Site says cross-site either way.
    window = attach_authenticator(context.new_page())
    window.page.goto(f"{own_broker.url}/signin")
    window.page.get_by_role("button", name="Create passkey").click()
    expect(window.page.get_by_role("heading", name="Settings")).to_be_visible()
    evil = context.new_page()
    evil.goto(two_apps[0])
    with evil.expect_navigation():
        evil.evaluate(
            """(broker) => {
            const f = document.createElement("form");
            f.method = "post"; f.action = broker + "/settings/account/delete";
            document.body.appendChild(f); f.submit(); }""",
            own_broker.url,
        )
    assert "Cross-site request refused" in evil.content()
    assert rows(own_broker.data_dir / "keybroker.db")["users"] == 1
