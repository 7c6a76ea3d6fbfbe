"""A thief holding only the owner's session cookie, in a browser of their own (Chromium), with
passkeys of their own but none of the owner's: every change that matters fails and changes
nothing. With the owner's passkey, each works.

The thief does not only click the owner's buttons: from a page on the broker's own origin
(so every request is same-origin, as CSRF checks see it) they post each action with no
confirmation, with a confirmation made by their own passkey, and with a replayed one.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, expect
from sqlalchemy import select
from sqlmodel import Session

from keybroker import db, provider_keys
from keybroker.crypto.keyring import KeyRing
from keybroker.models import Passkey, User
from keybroker.settings import load_settings
from tests.e2e.conftest import Window, attach_authenticator, owner_with_key
from tests.e2e.test_passkeys_browser import create_account
from tests.live import LiveBroker
from tests.upstream import Upstream

OWNER_KEY = "sk-test-owner-" + "O" * 36
THIEF_KEY = "sk-test-thief-" + "T" * 36
OWNER_NEW_KEY = "sk-test-owner-" + "N" * 36

# In the thief's page: what an attacker's script on the broker's origin can send. Each
# action is tried with no confirmation, with one by the thief's own passkey (allowCredentials
# set to it instead of the owner's) and with that confirmation replayed.
THIEF_SCRIPT = """
async ({ url, body, form, mineId }) => {
  const json = { "content-type": "application/json" };
  const post = async (target, payload) => {
    const credential = payload.credential ? JSON.stringify(payload.credential) : "";
    const response = await fetch(target, form
      ? { method: "POST", body: new URLSearchParams({ ...payload, credential }) }
      : { method: "POST", headers: json, body: JSON.stringify(payload) });
    return { status: response.status, text: await response.text() };
  };
  const start = async (path) =>
    (await fetch(path, { method: "POST", headers: json, body: "{}" })).json();
  const own = async () => {
    const options = (await start("/auth/confirm/options"));
    const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON({ ...options.publicKey,
      allowCredentials: [{ type: "public-key", id: mineId }], extensions: {} });
    const credential = await navigator.credentials.get({ publicKey });
    return { ceremony: options.ceremony, credential: credential.toJSON() };
  };
  const withNew = async (payload) => {
    if (url !== "/auth/passkeys/verify") return payload;
    // A passkey of the thief's to add: a real creation ceremony on the owner's session.
    const options = await start("/auth/passkeys/options");
    const created = await navigator.credentials.create({
      publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey) });
    return { ...payload, ceremony: options.ceremony, credential: created.toJSON(), name: "T" };
  };
  const mine = await own();
  const results = [];
  results.push(await post(url, await withNew({ ...body })));
  const confirmed = url === "/auth/passkeys/verify"
    ? await withNew({ ...body, confirm: mine }) : { ...body, ...mine };
  results.push(await post(url, confirmed));
  results.push(await post(url, confirmed));  // replayed
  return results;
}
"""


def thief_attempts(thief: Window, url: str, body: dict[str, Any], *, form: bool = False) -> None:
    mine = thief.credentials()[0]["credentialId"]  # the thief's own account's passkey
    mine = mine.replace("+", "-").replace("/", "_").rstrip("=")  # base64url, as JSON has it
    results = thief.page.evaluate(
        THIEF_SCRIPT, {"url": url, "body": body, "form": form, "mineId": mine}
    )
    assert len(results) == 3
    for result in results:
        assert result["status"] in (400, 401, 403, 409), (url, result)
        assert "Key saved" not in result["text"]


def owner_state(broker: LiveBroker) -> dict[str, Any]:
    """What the thief must not change: the key, custody, the passkeys, the account."""
    settings = load_settings({"KEYBROKER_DATA_DIR": str(broker.data_dir)}, env_file=None)
    engine = db.make_engine(settings.database_url)
    ring = KeyRing.parse(settings.master_keys)
    try:
        with Session(engine) as session:
            users = list(session.execute(select(User.id, User.name)).all())
            passkeys = sorted(
                (row.user_id, row.id, row.name, row.credential_id)
                for row in session.execute(select(Passkey)).scalars()
            )
        keys = {}
        for user_id, _ in users:
            stored = provider_keys.stored_key(engine, user_id)
            keys[user_id] = (
                None
                if stored is None
                else (stored.strict, provider_keys.open_key(engine, ring, user_id))
            )
        return {"users": sorted(users), "passkeys": passkeys, "keys": keys}
    finally:
        engine.dispose()


@pytest.fixture
def thief(browser: Browser, own_broker: LiveBroker) -> Any:
    """A browser of the thief's own with a passkey (for their own account on this broker)."""
    ctx = browser.new_context()
    ctx.set_default_timeout(15_000)
    window = attach_authenticator(ctx.new_page())
    create_account(window.page, own_broker)  # the thief's own account and passkey
    window.page.goto(f"{own_broker.url}/key")
    window.page.get_by_label("OpenAI API key").fill(THIEF_KEY)
    window.page.get_by_role("button", name="Save key").click()
    expect(window.page.get_by_role("status")).to_contain_text("Key saved")
    yield ctx, window
    ctx.close()


def steal_cookies(owner: BrowserContext, thief_ctx: BrowserContext) -> None:
    thief_ctx.clear_cookies()
    thief_ctx.add_cookies(owner.cookies())  # type: ignore[arg-type]


def test_a_stolen_cookie_changes_nothing_and_the_owners_passkey_changes_everything(
    context: BrowserContext, own_broker: LiveBroker, thief: Any, upstream: Upstream
) -> None:
    broker = own_broker
    thief_ctx, thief_window = thief
    owner = attach_authenticator(context.new_page())
    page = owner.page
    owner_with_key(page, broker, OWNER_KEY)
    # A second passkey on a security key, so that removing one is allowed at all.
    page.goto(f"{broker.url}/settings")
    page.get_by_label("Name for the new passkey").fill("Security key")
    page.get_by_role("button", name="Add passkey").click()
    expect(page.get_by_role("button", name="Create the new passkey")).to_be_visible()
    usb = owner.another_authenticator(transport="usb")
    owner.present(False)
    page.get_by_role("button", name="Create the new passkey").click()
    expect(page.get_by_role("status").first).to_contain_text("Passkey added")
    owner.present(True)
    usb.present(False)
    owner_passkeys = {c["credentialId"] for c in owner.credentials() + usb.credentials()}

    before = owner_state(broker)
    owner_id = next(uid for uid, key in before["keys"].items() if key and key[1] == OWNER_KEY)
    security_key = next(
        p[1] for p in before["passkeys"] if p[0] == owner_id and p[2] == "Security key"
    )
    thief_checks = upstream.keys_seen().count(f"Bearer {THIEF_KEY}")

    # The theft: the owner's cookies, in the thief's browser that holds none of their passkeys.
    steal_cookies(context, thief_ctx)
    tp = thief_window.page
    tp.goto(f"{broker.url}/settings")
    expect(tp.get_by_role("heading", name="Settings")).to_be_visible()  # the session works
    assert not owner_passkeys & {c["credentialId"] for c in thief_window.credentials()}

    thief_attempts(thief_window, "/auth/passkeys/verify", {})  # add a passkey of the thief's
    thief_attempts(thief_window, "/key", {"key": THIEF_KEY, "next": "/key"}, form=True)
    thief_attempts(thief_window, f"/settings/passkeys/{security_key}/remove", {"delete_key": True})
    thief_attempts(thief_window, "/settings/custody", {"strict": True})
    thief_attempts(thief_window, "/settings/key/delete", {})
    thief_attempts(thief_window, "/settings/account/delete", {})
    # And through the owner's own buttons: the prompt finds none of the owner's passkeys.
    tp.goto(f"{broker.url}/settings")
    tp.get_by_role("button", name="Delete account").click()
    expect(tp.locator("#account").get_by_role("alert")).not_to_be_empty()

    assert owner_state(broker) == before
    # The thief's key was not even checked with OpenAI through the owner's account.
    assert upstream.keys_seen().count(f"Bearer {THIEF_KEY}") == thief_checks

    # The owner, with their passkey, does each of these.
    page.goto(f"{broker.url}/key")
    page.get_by_label("OpenAI API key").fill(OWNER_NEW_KEY)
    page.get_by_role("button", name="Save key").click()
    expect(page.locator(".key-hint")).to_have_text(f"sk-...{OWNER_NEW_KEY[-4:]}")

    page.goto(f"{broker.url}/settings")
    page.get_by_role("button", name="Remove passkey Security key").click()
    expect(page.get_by_role("status").first).to_contain_text("Passkey removed")

    page.get_by_label("Name for the new passkey").fill("Another key")
    page.get_by_role("button", name="Add passkey").click()
    expect(page.get_by_role("button", name="Create the new passkey")).to_be_visible()
    usb.present(True)
    owner.present(False)
    page.get_by_role("button", name="Create the new passkey").click()
    expect(page.locator("#kb-error")).to_have_text("")
    expect(page.get_by_role("status").first).to_contain_text("Passkey added")
    owner.present(True)
    usb.present(False)
    page.get_by_role("button", name="Remove passkey Another key").click()
    expect(page.get_by_role("status").first).to_contain_text("Passkey removed")

    page.get_by_role("button", name="Switch to strict custody").click()
    expect(page.get_by_role("status").first).to_contain_text("Strict custody is on.")
    page.get_by_role("button", name="Switch to master-key custody").click()
    expect(page.get_by_role("status").first).to_contain_text("Master-key custody is on.")

    page.get_by_role("button", name="Delete account").click()
    expect(page).to_have_url(re.compile(r"/\?deleted=1$"))
    after = owner_state(broker)
    assert owner_id not in {uid for uid, _ in after["users"]}
    # The thief's copy of the cookie is dead too.
    tp.goto(f"{broker.url}/settings")
    expect(tp).to_have_url(re.compile(r"/signin\?next=/settings$"))
