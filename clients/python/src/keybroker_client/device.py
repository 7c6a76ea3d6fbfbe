"""The device flow (RFC 8628): show a code and a URL, poll until the owner answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from keybroker_client.errors import KeybrokerError
from keybroker_client.oauth import Ask, access, expires_in, oauth_error, post_form

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5  # RFC 8628 §3.5
sleep: Callable[[float], None] = time.sleep  # replaced by tests
clock: Callable[[], float] = time.monotonic


def instructions(started: dict[str, Any]) -> str:
    text = (
        f"To let this app use your OpenAI account, open {started['verification_uri']}\n"
        f"and enter the code {started['user_code']}"
    )
    complete = started.get("verification_uri_complete")
    return f"{text}\n(or open {complete})" if isinstance(complete, str) else text


def run(
    http: httpx.Client, ask: Ask, *, timeout: float, show: Callable[[str], None]
) -> tuple[dict[str, str], float | None]:
    """The access and its lifetime in seconds."""
    url = f"{ask.broker}/oauth/device_authorization"
    status, started = post_form(http, url, ask.params())
    if status != 200:
        raise oauth_error(url, status, started)
    for name in ("device_code", "user_code", "verification_uri"):
        if not isinstance(started.get(name), str) or not started[name]:
            raise KeybrokerError("invalid_response", f"the device authorization lacks {name}")
    interval = started.get("interval", 5)
    lifetime = started.get("expires_in")
    if not isinstance(interval, int) or not isinstance(lifetime, int | float) or interval < 0:
        raise KeybrokerError("invalid_response", "the device authorization's times are wrong")
    show(instructions(started))
    now = clock()
    expires_at, gives_up_at = now + lifetime, now + timeout
    token_url = f"{ask.broker}/oauth/token"
    form = {"grant_type": GRANT_TYPE, "device_code": started["device_code"]}
    form["client_id"] = ask.client_id
    while True:
        # Wait first: the owner needs a moment, and polling faster than ``interval`` is
        # answered with slow_down (RFC 8628 §3.5).
        sleep(interval)
        if clock() >= expires_at:
            raise KeybrokerError("expired", "The code expired before the owner answered.")
        if clock() >= gives_up_at:
            raise KeybrokerError("timeout", f"No answer within {timeout:g} seconds.")
        status, body = post_form(http, token_url, form)
        if status == 200:
            return access(body), expires_in(body)
        error = body.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += SLOW_DOWN_STEP
            continue
        if error == "expired_token":
            raise KeybrokerError("expired", "The code expired before the owner answered.")
        raise oauth_error(token_url, status, body)
