"""After sign-in, no ``next`` value leaves the broker's origin (Chromium).

Each value is tried as an attacker would put it in a link: raw in the query (so the server
decodes ``%09`` to a TAB and ``%2F%2F`` to ``//``) and fully percent-encoded (so the server
sees exactly the characters written). The target "host" is a real page on another origin
(the demo app), so a redirect that escaped would land somewhere and be seen.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from playwright.sync_api import Page

from tests.e2e.conftest import Window
from tests.e2e.test_passkeys_browser import create_account, sign_out
from tests.live import LiveBroker


def hostile(host: str) -> list[str]:
    return [
        f"/%09/{host}",
        f"/\\{host}",
        f"//{host}",
        f"%2F%2F{host}",
        f"https://{host}",
        f"http://{host}",
        "javascript:alert(document.domain)",
        f"/\t/{host}",
        f"/\n/{host}",
        f"/ /{host}",
        f"\\\\{host}",
        f"/%5C{host}",
        f"/.//{host}",
        f"/%2e%2e//{host}",
        f"//{host}/%2f..",
        f"/\u3000/{host}",
        f"///{host}",
    ]


def links(value: str) -> list[str]:
    return [f"/signin?next={value}", f"/signin?next={quote(value, safe='')}"]


@pytest.fixture
def demo_host(demo: str) -> str:
    return demo.split("://", 1)[1]


def test_sign_in_never_redirects_off_the_broker(
    window: Window, broker: LiveBroker, demo_host: str
) -> None:
    page = window.page
    create_account(page, broker)
    sign_out(page, broker)
    for value in hostile(demo_host):
        for link in links(value):
            page.goto(f"{broker.url}{link}")
            page.get_by_role("button", name="Sign in with passkey").click()
            left_sign_in(page, broker, link)
            # Signed in already: the server's own redirect is checked the same way.
            page.goto(f"{broker.url}{link}")
            left_sign_in(page, broker, link)
            page.goto(f"{broker.url}/settings")
            sign_out(page, broker)


def test_the_pages_script_checks_again(window: Window, broker: LiveBroker, demo_host: str) -> None:
    """The page's own check (static/js/http.js) holds even if a value got past the server."""
    page = window.page
    page.goto(f"{broker.url}/signin")
    for value in [*hostile(demo_host), f"/%09/{demo_host}".replace("%09", "\t")]:
        target = page.evaluate("(next) => window.kb.safeNext(next)", value)
        assert target.startswith(f"{broker.url}/"), (value, target)
    for ok in ["/settings", "/key?next=/settings", "/authorize?client_id=https%3A%2F%2Fa.example"]:
        assert page.evaluate("(next) => window.kb.safeNext(next)", ok) == f"{broker.url}{ok}"


def left_sign_in(page: Page, broker: LiveBroker, link: str) -> None:
    """Wait until the sign-in page has sent the browser on; it must still be the broker.
    (A fully encoded value such as "/%2509/host" is a harmless path here, so it may be a
    404 page of the broker's; anything else goes to /settings.)"""
    page.wait_for_url(lambda url: "/signin" not in url)
    page.wait_for_load_state()
    assert page.evaluate("() => location.origin") == broker.url, (link, page.url)
