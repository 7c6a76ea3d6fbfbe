"""Passkey key slots in Chromium, with virtual authenticators with and without `hasPrf`.

Consent runs in the same window as the authenticator (a registered app with a loopback
redirect), because a credential copied to another virtual authenticator keeps its private key
but not its PRF secret."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from keybroker import db, provider_keys
from keybroker.crypto.keyring import KeyRing
from keybroker.settings import load_settings
from tests.e2e.conftest import Window, attach_authenticator, owner_with_key
from tests.e2e.loopback import Callback, register_app
from tests.helpers import authorize_query, pkce
from tests.live import LiveBroker

KEY = "sk-test-slots-" + "P" * 36


@pytest.fixture
def cli_client(own_broker: LiveBroker) -> str:
    return register_app(own_broker, "Slot test app")


def allow_app(page: Page, broker: LiveBroker, client_id: str) -> str:
    """The app asks, the owner allows in this window; returns the app's token."""
    callback = Callback()
    redirect = callback.redirect_uri
    verifier, challenge = pkce()
    page.goto(
        f"{broker.url}/authorize?{authorize_query(client_id, challenge, redirect_uri=redirect)}"
    )
    page.get_by_role("button", name="Allow").click()
    expect(page.get_by_text("You can close this window")).to_be_visible()
    callback.close()
    token = httpx.post(
        f"{broker.url}/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": callback.params["code"][0],
            "client_id": client_id,
            "code_verifier": verifier,
            "redirect_uri": redirect,
        },
    )
    assert token.status_code == 200, token.text
    access: str = token.json()["access_token"]
    return access


def works(broker: LiveBroker, token: str) -> bool:
    return (
        httpx.get(
            f"{broker.url}/v1/models", headers={"authorization": f"Bearer {token}"}
        ).status_code
        == 200
    )


def switch_custody(page: Page, broker: LiveBroker, name: str) -> None:
    page.goto(f"{broker.url}/settings#key")
    page.get_by_role("button", name=name).click()


def operator_view(broker: LiveBroker) -> tuple[object, KeyRing]:
    """What a thief of the database file and the master keys holds."""
    settings = load_settings({"KEYBROKER_DATA_DIR": str(broker.data_dir)}, env_file=None)
    return db.make_engine(settings.database_url), KeyRing.parse(settings.master_keys)


def test_strict_custody_locks_the_operator_out(
    context: BrowserContext, own_broker: LiveBroker, cli_client: str
) -> None:
    broker = own_broker
    from tests.test_key_slots import assert_nothing_opens

    window = attach_authenticator(context.new_page())  # hasPrf
    page = window.page
    owner_with_key(page, broker, KEY)
    before = allow_app(page, broker, cli_client)  # this consent gives the passkey its slot
    page.goto(f"{broker.url}/settings")
    expect(page.locator("table.passkeys")).to_contain_text("supported")
    switch_custody(page, broker, "Switch to strict custody")
    expect(page.get_by_role("status").first).to_contain_text("Strict custody is on.")
    expect(page.locator(".custody")).to_contain_text("Only your passkeys can open your key")

    engine, ring = operator_view(broker)
    assert_nothing_opens(engine, ring, KEY)  # type: ignore[arg-type]
    engine.dispose()  # type: ignore[attr-defined]

    after = allow_app(page, broker, cli_client)  # the owner's passkey opens it
    assert works(broker, before)
    assert works(broker, after)


def test_two_prf_passkeys_each_open_and_one_can_go(
    context: BrowserContext, own_broker: LiveBroker, cli_client: str
) -> None:
    broker = own_broker
    first = attach_authenticator(context.new_page())
    page = first.page
    owner_with_key(page, broker, KEY)
    # A second device beside the first in this window; only the one present answers.
    page.goto(f"{broker.url}/settings")
    page.get_by_label("Name for the new passkey").fill("Second device")
    page.get_by_role("button", name="Add passkey").click()  # confirmed by the first
    expect(page.get_by_role("button", name="Create the new passkey")).to_be_visible()
    second = first.another_authenticator(transport="usb")  # a security key
    first.present(False)
    page.get_by_role("button", name="Create the new passkey").click()
    expect(page.get_by_role("status").first).to_contain_text("Passkey added")

    def using(device: Window) -> Page:
        for each in (first, second):
            each.present(each is device)
        return page

    allow_app(using(first), broker, cli_client)  # the first passkey's slot
    page.goto(f"{broker.url}/settings")
    expect(page.locator('td[data-label="Key slot"]', has_text="yes")).to_have_count(2)
    switch_custody(using(second), broker, "Switch to strict custody")
    expect(page.get_by_role("status").first).to_contain_text("Strict custody is on.")

    assert works(broker, allow_app(using(first), broker, cli_client))
    assert works(broker, allow_app(using(second), broker, cli_client))

    page.goto(f"{broker.url}/settings")
    using(second).get_by_role("button", name="Remove passkey First passkey").click()
    expect(page.get_by_role("status").first).to_contain_text("Passkey removed")
    assert works(broker, allow_app(using(second), broker, cli_client))


def test_passkey_without_prf_keeps_master_custody(
    context: BrowserContext, own_broker: LiveBroker, cli_client: str
) -> None:
    broker = own_broker
    window = attach_authenticator(context.new_page(), hasPrf=False)
    page = window.page
    owner_with_key(page, broker, KEY)
    assert works(broker, allow_app(page, broker, cli_client))
    page.goto(f"{broker.url}/settings")
    expect(page.locator("table.passkeys")).to_contain_text("not supported")
    expect(page.locator(".custody")).to_contain_text("Master-key custody")
    switch_custody(page, broker, "Switch to strict custody")
    alert = page.locator("#key").get_by_role("alert")
    expect(alert).to_contain_text("PRF")
    expect(alert).to_contain_text("First passkey")
    # Master-key custody: the operator's master keys open it, as the page says.
    engine, ring = operator_view(broker)
    with engine.connect() as conn:  # type: ignore[attr-defined]
        user_id = conn.exec_driver_sql("SELECT id FROM users").scalar_one()
    assert provider_keys.open_key(engine, ring, user_id) == KEY  # type: ignore[arg-type]
    engine.dispose()  # type: ignore[attr-defined]
