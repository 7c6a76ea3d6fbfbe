"""The owner's key in Chromium: paste, masked, replace, delete; then grep for leaks."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.e2e.conftest import Window
from tests.e2e.test_passkeys_browser import create_account
from tests.live import LiveBroker

FIRST = "sk-test-browser-" + "F1rstKeyMaterial" * 2
SECOND = "sk-test-browser-" + "SecondKeyMater1al" * 2


def save_key(page: Page, key: str) -> None:
    page.get_by_label("OpenAI API key").fill(key)
    page.get_by_role("button", name="Save key").click()


def test_paste_mask_replace_delete_and_no_leak(window: Window, broker: LiveBroker) -> None:
    page = window.page
    pages: list[str] = []
    page.on(
        "response",
        lambda r: (
            pages.append(r.text()) if "text/html" in r.headers.get("content-type", "") else None
        ),
    )
    create_account(page, broker)
    page.get_by_role("link", name="Add your OpenAI key").click()

    save_key(page, FIRST)
    expect(page.get_by_role("status")).to_contain_text("Key saved")
    expect(page.locator(".key-hint")).to_have_text(f"sk-...{FIRST[-4:]}")

    save_key(page, "sk-test-bad-" + "x" * 30)
    expect(page.get_by_role("alert")).to_contain_text("OpenAI rejected this key")
    expect(page.locator(".key-hint")).to_have_text(f"sk-...{FIRST[-4:]}")

    save_key(page, SECOND)
    expect(page.locator(".key-hint")).to_have_text(f"sk-...{SECOND[-4:]}")

    page.goto(f"{broker.url}/settings")
    expect(page.locator("#key .key-hint")).to_have_text(f"sk-...{SECOND[-4:]}")
    pages.append(page.content())

    # Leak check while the key is stored: database files, logs, every HTML page seen.
    for key in (FIRST, SECOND):
        for path in Path(broker.data_dir).rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path
                assert key[8:].encode() not in path.read_bytes(), path
        assert key not in broker.logs()
        assert not any(key in html for html in pages)

    page.goto(f"{broker.url}/key")
    page.get_by_role("link", name="Delete key").click()
    expect(page.get_by_role("heading", name="Delete your OpenAI key?")).to_be_visible()
    page.get_by_role("button", name="Delete key").click()
    expect(page.get_by_role("status")).to_contain_text("Key deleted")
    expect(page.locator(".key-hint")).to_have_count(0)
