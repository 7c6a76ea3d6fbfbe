"""Passkey accounts in Chromium with a CDP virtual authenticator."""

from __future__ import annotations

import re

from playwright.sync_api import BrowserContext, Page, expect

from tests.e2e.conftest import Window, attach_authenticator
from tests.live import LiveBroker


def create_account(page: Page, broker: LiveBroker) -> None:
    page.goto(f"{broker.url}/signin")
    page.get_by_role("button", name="Create passkey").click()
    expect(page).to_have_url(f"{broker.url}/settings")
    expect(page.get_by_role("heading", name="Settings")).to_be_visible()


def sign_out(page: Page, broker: LiveBroker) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{broker.url}/")
    page.goto(f"{broker.url}/settings")
    expect(page).to_have_url(re.compile(r"/signin\?next=/settings$"))


def sign_in(page: Page, broker: LiveBroker) -> None:
    page.goto(f"{broker.url}/signin")
    page.get_by_role("button", name="Sign in with passkey").click()
    expect(page).to_have_url(f"{broker.url}/settings")


def add_passkey_on_new_device(window: Window) -> Window:
    """Confirm with ``window``'s passkey, then create the new one on another authenticator
    (excludeCredentials keeps it off this one), like a phone; returns the new device."""
    page = window.page
    page.get_by_role("button", name="Add passkey").click()
    expect(page.get_by_role("button", name="Create the new passkey")).to_be_visible()
    window.cdp.send(
        "WebAuthn.removeVirtualAuthenticator", {"authenticatorId": window.authenticator_id}
    )
    second = attach_authenticator(page)
    page.get_by_role("button", name="Create the new passkey").click()
    return second


def test_create_sign_out_sign_in_reload(window: Window, broker: LiveBroker) -> None:
    page = window.page
    create_account(page, broker)
    assert len(window.credentials()) == 1
    sign_out(page, broker)
    sign_in(page, broker)
    page.reload()
    expect(page.get_by_role("heading", name="Settings")).to_be_visible()
    sign_out(page, broker)


def test_second_passkey_signs_in(window: Window, broker: LiveBroker) -> None:
    page = window.page
    create_account(page, broker)
    page.get_by_label("Name for the new passkey").fill("Second device")
    first = window.credentials()[0]
    second = add_passkey_on_new_device(window)
    expect(page.get_by_role("status").first).to_contain_text("Passkey added")
    expect(
        page.locator("table.passkeys").get_by_role("cell", name="Second device", exact=True)
    ).to_be_visible()
    sign_out(page, broker)
    sign_in(page, broker)  # with the second device's passkey
    assert second.credentials()[0]["credentialId"] != first["credentialId"]
    assert second.credentials()[0]["signCount"] >= 1


def test_assertion_without_user_verification_is_refused(window: Window, broker: LiveBroker) -> None:
    page = window.page
    create_account(page, broker)
    sign_out(page, broker)
    window.override(isBadUV=True)
    page.goto(f"{broker.url}/signin")
    page.get_by_role("button", name="Sign in with passkey").click()
    expect(page.get_by_role("alert")).to_contain_text(re.compile("user verification", re.I))
    page.goto(f"{broker.url}/settings")
    expect(page).to_have_url(re.compile(r"/signin"))


def test_unknown_passkey_is_refused(
    window: Window, broker: LiveBroker, context: BrowserContext
) -> None:
    page = window.page
    create_account(page, broker)
    sign_out(page, broker)
    # A fresh authenticator with a credential the broker never saw.
    stranger = attach_authenticator(context.new_page())
    stranger.page.goto(f"{broker.url}/signin")
    stranger.page.get_by_role("button", name="Create passkey").click()
    expect(stranger.page).to_have_url(f"{broker.url}/settings")
    cred = stranger.credentials()[0]
    sign_out(stranger.page, broker)  # the context's cookie jar is shared
    stranger.page.close()
    window.cdp.send("WebAuthn.clearCredentials", {"authenticatorId": window.authenticator_id})
    cred["credentialId"] = cred["credentialId"][:-4] + (
        "AAAA" if not cred["credentialId"].endswith("AAAA") else "BBBB"
    )
    window.add_credential(cred)
    page.goto(f"{broker.url}/signin")
    page.get_by_role("button", name="Sign in with passkey").click()
    expect(page.get_by_role("alert")).to_contain_text(re.compile("not registered", re.I))
