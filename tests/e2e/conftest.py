"""Playwright on Debian's Chromium with a CDP virtual authenticator per page (DESIGN.md)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    CDPSession,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from tests.live import LiveBroker, start_broker
from tests.upstream import Upstream

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
AUTHENTICATOR = {
    "protocol": "ctap2",
    "ctap2Version": "ctap2_1",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "hasPrf": True,
    "automaticPresenceSimulation": True,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.browser)


# Module scope: Playwright's sync API keeps an event loop running in this thread while it is
# open, so it is closed after each browser module rather than held for the whole session.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (bash .ci/run does)")
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    instance = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
    yield instance
    instance.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[LiveBroker]:
    live = start_broker(
        tmp_path_factory.mktemp("broker"),
        {"KEYBROKER_UPSTREAM_URL": upstream.url, "KEYBROKER_VALIDATION_TIMEOUT": "1"},
    )
    yield live
    live.stop()


@pytest.fixture
def own_broker(tmp_path: Path, upstream: Upstream) -> Iterator[LiveBroker]:
    """A broker of the test's own, with an empty database (the session one is shared)."""
    live = start_broker(tmp_path, {"KEYBROKER_UPSTREAM_URL": upstream.url})
    yield live
    live.stop()


@pytest.fixture(scope="session")
def demo(broker: LiveBroker) -> Iterator[str]:
    """The example third-party app on its own origin (127.0.0.1, the broker is on localhost)."""
    from keybroker.demo import create_demo_app
    from tests.upstream import serve_in_thread

    server, url = serve_in_thread(create_demo_app(broker.url))
    yield url
    server.should_exit = True


@dataclass
class Window:
    """A page with its own virtual authenticator (authenticators are per window)."""

    page: Page
    cdp: CDPSession
    authenticator_id: str

    def credentials(self) -> list[dict[str, Any]]:
        result = self.cdp.send(
            "WebAuthn.getCredentials", {"authenticatorId": self.authenticator_id}
        )
        creds: list[dict[str, Any]] = result["credentials"]
        return creds

    def add_credential(self, credential: dict[str, Any]) -> None:
        self.cdp.send(
            "WebAuthn.addCredential",
            {"authenticatorId": self.authenticator_id, "credential": credential},
        )

    def bump_sign_count(self, by: int) -> None:
        """Move this authenticator's counters on, as if its copies elsewhere had signed."""
        for credential in self.credentials():
            self.cdp.send(
                "WebAuthn.removeCredential",
                {
                    "authenticatorId": self.authenticator_id,
                    "credentialId": credential["credentialId"],
                },
            )
            self.add_credential({**credential, "signCount": credential["signCount"] + by})

    def present(self, enabled: bool) -> None:
        """Whether this authenticator answers at once (True) or never (False): with two
        authenticators in one window, the one present is the one that answers."""
        self.cdp.send(
            "WebAuthn.setAutomaticPresenceSimulation",
            {"authenticatorId": self.authenticator_id, "enabled": enabled},
        )

    def another_authenticator(self, **options: Any) -> Window:
        """A second authenticator in this window, like a security key beside a laptop's own."""
        result = self.cdp.send(
            "WebAuthn.addVirtualAuthenticator", {"options": {**AUTHENTICATOR, **options}}
        )
        return Window(self.page, self.cdp, result["authenticatorId"])

    def override(self, **bits: bool) -> None:
        self.cdp.send(
            "WebAuthn.setResponseOverrideBits", {"authenticatorId": self.authenticator_id, **bits}
        )


def owner_with_key(page: Page, broker: LiveBroker, key: str) -> None:
    """Sign up with a passkey on ``page`` and save ``key`` through the key page."""
    page.goto(f"{broker.url}/signin")
    page.get_by_role("button", name="Create passkey").click()
    expect(page.get_by_role("heading", name="Settings")).to_be_visible()
    page.goto(f"{broker.url}/key")
    page.get_by_label("OpenAI API key").fill(key)
    page.get_by_role("button", name="Save key").click()
    expect(page.get_by_role("status")).to_contain_text("Key saved")


def load_until(page: Page, url: str, shown: Callable[[], bool], *, tries: int = 80) -> None:
    """Load ``url`` until ``shown()``: usage is written off the hot path, by a writer process
    that starts with the first request, so a fresh broker's first row lands a moment later."""
    for _ in range(tries):
        page.goto(url)
        if shown():
            return
        page.wait_for_timeout(100)


def attach_authenticator(page: Page, **options: Any) -> Window:
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    result = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {**AUTHENTICATOR, **options}})
    return Window(page, cdp, result["authenticatorId"])


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context()
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


@pytest.fixture
def window(context: BrowserContext) -> Window:
    return attach_authenticator(context.new_page())


@pytest.fixture
def screenshots() -> Path:
    path = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
