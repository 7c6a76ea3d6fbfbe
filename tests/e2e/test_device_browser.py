"""The device flow (RFC 8628) in Chromium: a command-line app registered with the CLI starts
the flow over HTTP and polls, while the owner types its code into the broker's device page."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Window
from tests.e2e.loopback import register_app
from tests.live import LiveBroker

KEY = "sk-test-device-" + "D" * 32
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"


class Poller(threading.Thread):
    """What a headless app does: start the flow, then poll at the interval it was given."""

    def __init__(self, broker: str, client_id: str) -> None:
        super().__init__(daemon=True)
        self.broker, self.client_id = broker, client_id
        started = httpx.post(
            f"{broker}/oauth/device_authorization",
            data={"client_id": client_id, "scope": "chat models", "models": "gpt-4o-mini"},
        )
        assert started.status_code == 200, started.text
        self.started: dict[str, Any] = started.json()
        self.answers: list[str] = []
        self.token: dict[str, Any] | None = None

    def run(self) -> None:
        interval = self.started["interval"]
        deadline = time.monotonic() + self.started["expires_in"]
        while time.monotonic() < deadline:
            answer = httpx.post(
                f"{self.broker}/oauth/token",
                data={
                    "grant_type": GRANT_TYPE,
                    "device_code": self.started["device_code"],
                    "client_id": self.client_id,
                },
            )
            if answer.status_code == 200:
                self.token = answer.json()
                return
            error = answer.json()["error"]
            self.answers.append(error)
            if error == "slow_down":
                interval += 5
            elif error != "authorization_pending":
                return
            time.sleep(interval)  # the app's polling interval, not a wait in the browser


def enter_code(page: Page, url: str, user_code: str) -> None:
    page.goto(url)
    page.get_by_label("Code shown by the app").fill(user_code)
    page.get_by_role("button", name="Continue").click()


def test_device_flow_end_to_end(window: Window, broker: LiveBroker) -> None:
    client_id = register_app(broker, "Headless Tool", "--device")
    poller = Poller(broker.url, client_id)
    poller.start()
    page = window.page
    enter_code(page, poller.started["verification_uri"], poller.started["user_code"].lower())
    page.get_by_role("button", name="Create passkey").click()
    page.get_by_label("OpenAI API key").fill(KEY)
    page.get_by_role("button", name="Save key").click()
    expect(page.get_by_role("heading", name="Allow access?")).to_be_visible()
    expect(page.get_by_role("note")).to_contain_text("A device is asking")
    # The code to compare with the device's (RFC 8628 §5.4), and no id in the address.
    expect(page.locator("#kb-device-code")).to_have_text(poller.started["user_code"])
    expect(page).to_have_url(f"{broker.url}/device/request")
    expect(page.locator(".app-name")).to_have_text("Headless Tool")
    expect(page.get_by_label("Models it may use")).to_have_value("gpt-4o-mini")
    page.get_by_role("button", name="Allow").click()
    expect(page.get_by_text("Return to your device")).to_be_visible()

    poller.join(timeout=60)
    assert poller.token is not None, poller.answers
    assert set(poller.answers) <= {"authorization_pending"}
    assert poller.token["base_url"] == f"{broker.url}/v1"
    assert poller.token["scope"] == "chat models"
    sdk = openai.OpenAI(
        api_key=poller.token["access_token"], base_url=poller.token["base_url"], max_retries=0
    )
    answer = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "Hello there!"
    # The code is spent: typing it again is refused.
    enter_code(page, poller.started["verification_uri"], poller.started["user_code"])
    expect(page.get_by_role("alert")).to_contain_text("not valid")


def test_device_flow_deny(window: Window, broker: LiveBroker) -> None:
    client_id = register_app(broker, "Denied Tool", "--device")
    poller = Poller(broker.url, client_id)
    poller.start()
    page = window.page
    # verification_uri_complete fills the field; the owner still compares and continues.
    page.goto(poller.started["verification_uri_complete"])
    expect(page).to_have_url(f"{broker.url}/device")  # the code left the address bar
    expect(page.get_by_label("Code shown by the app")).to_have_value(poller.started["user_code"])
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("button", name="Create passkey").click()
    page.get_by_label("OpenAI API key").fill(KEY)
    page.get_by_role("button", name="Save key").click()
    page.get_by_role("button", name="Deny").click()
    expect(page.get_by_text("Denied.")).to_be_visible()
    poller.join(timeout=60)
    assert poller.token is None
    assert poller.answers[-1] == "access_denied"
