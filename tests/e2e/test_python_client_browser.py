"""The keybroker-client package (clients/python) against a live broker, with the owner in
Chromium: the device flow, the loopback flow, the token cache and revoke."""

from __future__ import annotations

import queue
import re
import threading
from pathlib import Path
from typing import Any

import openai
import pytest
from keybroker_client import request_openai_api, revoke
from playwright.sync_api import expect

from tests.e2e.conftest import Window
from tests.e2e.loopback import register_app
from tests.live import LiveBroker

KEY = "sk-test-pyclient-" + "P" * 32


class InThread(threading.Thread):
    """``request_openai_api`` running as the app would, while the test drives the browser."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.kwargs = kwargs
        self.result: dict[str, str] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = request_openai_api(**self.kwargs)
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> dict[str, str]:
        self.join(timeout=90)
        assert self.error is None, self.error
        assert self.result is not None
        return self.result


def chat(access: dict[str, str]) -> str | None:
    sdk = openai.OpenAI(**access, max_retries=0)
    answer = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    return answer.choices[0].message.content


def test_python_client_both_flows_cache_and_revoke(
    window: Window, broker: LiveBroker, tmp_path: Path
) -> None:
    client_id = register_app(
        broker, "Py Tool", "--device", "--redirect-uri", "http://127.0.0.1/callback"
    )
    cache = tmp_path / "keybroker-client" / "tokens.json"
    page = window.page

    # The device flow: the app prints a code and a URL; the owner enters it in the browser.
    shown: queue.Queue[str] = queue.Queue()
    app = InThread(
        broker=broker.url,
        client_id=client_id,
        scopes=["chat", "models"],
        models=["gpt-4o-mini"],
        budget_usd=3,
        flow="device",
        cache=cache,
        show=shown.put,
    )
    app.start()
    text = shown.get(timeout=30)
    code = re.search(r"\b[A-Z]{4}-[A-Z]{4}\b", text)
    url = re.search(r"(http://\S+/device)\s", text)
    assert code is not None
    assert url is not None
    page.goto(url.group(1))
    page.get_by_label("Code shown by the app").fill(code.group(0))
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("button", name="Create passkey").click()
    page.get_by_label("OpenAI API key").fill(KEY)
    page.get_by_role("button", name="Save key").click()
    expect(page.get_by_role("note")).to_contain_text("A device is asking")
    expect(page.get_by_label("Monthly budget (USD)")).to_have_value("3.00")
    page.get_by_role("button", name="Allow").click()
    expect(page.get_by_text("Return to your device")).to_be_visible()
    device_access = app.outcome()
    assert device_access["base_url"] == f"{broker.url}/v1"
    assert chat(device_access) == "Hello there!"

    # The cache: the same request again needs no flow at all.
    cached = request_openai_api(
        broker.url,
        client_id,
        models=["gpt-4o-mini"],
        budget_usd=3,
        flow="device",
        cache=cache,
        show=lambda text: pytest.fail(f"the cached token was not used: {text}"),
    )
    assert cached == device_access

    # The loopback flow: the "browser" the package opens is this page (already signed in).
    opened: queue.Queue[str] = queue.Queue()
    app = InThread(
        broker=broker.url,
        client_id=client_id,
        scopes=["chat"],
        flow="loopback",
        cache=cache,
        open_browser=lambda url: opened.put(url) is None,
        show=lambda text: None,
    )
    app.start()
    page.goto(opened.get(timeout=30))
    expect(page.locator(".app-name")).to_have_text("Py Tool")
    page.get_by_role("button", name="Allow").click()
    expect(page.get_by_text("You can close this window")).to_be_visible()
    loopback_access = app.outcome()
    assert loopback_access["api_key"] != device_access["api_key"]
    assert chat(loopback_access) == "Hello there!"

    # revoke(): both cached tokens are signed out at the broker and forgotten.
    assert revoke(broker.url, client_id, cache=cache) == 2
    for access in (device_access, loopback_access):
        with pytest.raises(openai.AuthenticationError):
            chat(access)
    assert access["api_key"] not in cache.read_text()
