"""``request_openai_api`` and ``revoke``: the package's whole public surface."""

from __future__ import annotations

import os
import sys
import webbrowser
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import httpx

from keybroker_client import device, loopback
from keybroker_client.cache import TokenCache, default_path, key
from keybroker_client.errors import KeybrokerError
from keybroker_client.oauth import Ask, broker_url

Flow = Literal["auto", "loopback", "device"]
CachePath = bool | str | os.PathLike[str]
DEFAULT_SCOPES = ("chat", "models")


def browser_available() -> bool:
    """Whether a graphical browser can be opened here: not over SSH without a display, not
    on a Linux box without one, and only if Python's webbrowser finds one."""
    graphical = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if sys.platform not in ("darwin", "win32") and not graphical:
        return False
    if os.environ.get("SSH_CONNECTION") and not graphical:
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def _open_in_browser(url: str) -> bool:
    return webbrowser.open(url)


def _print(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cache(cache: CachePath) -> TokenCache | None:
    if cache is False:
        return None
    return TokenCache(default_path() if cache is True else Path(cache))


def _still_valid(http: httpx.Client, broker: str, api_key: str) -> bool:
    """A cached token the broker still knows; one it refuses (revoked, expired) is not."""
    try:
        answer = http.get(f"{broker}/api/grant", headers={"authorization": f"Bearer {api_key}"})
    except httpx.HTTPError as exc:
        raise KeybrokerError("unreachable", f"{broker}: {type(exc).__name__}") from None
    return answer.status_code not in (401, 403, 404)


def request_openai_api(
    broker: str,
    client_id: str,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    models: Sequence[str] = (),
    budget_usd: float | None = None,
    *,
    flow: Flow = "auto",
    cache: CachePath = False,
    timeout: float = 600,
    open_browser: Callable[[str], bool] | None = None,
    show: Callable[[str], None] = _print,
    http: httpx.Client | None = None,
) -> dict[str, str]:
    """Ask the owner for OpenAI access through keybroker; returns ``{"api_key", "base_url"}``,
    which ``openai.OpenAI(**access)`` takes as is.

    ``flow="auto"`` uses the loopback flow when a browser can be opened (``open_browser``, or
    the system's), else the device flow, which ``show``s a code and a URL (on stderr by
    default). ``cache=True`` keeps the token in the user's config directory (mode 0600),
    or give a path. Raises KeybrokerError with a ``code`` (see errors.CODES).
    """
    if flow not in ("auto", "loopback", "device"):
        raise ValueError(f"flow must be 'auto', 'loopback' or 'device', not {flow!r}")
    ask = Ask(broker_url(broker), client_id, tuple(scopes), tuple(models), budget_usd)
    tokens = _cache(cache)
    name = key(ask.broker, client_id, ask.scopes)
    with http or httpx.Client(timeout=30) as client:
        if tokens is not None and (cached := tokens.get(name)) is not None:
            if _still_valid(client, ask.broker, cached["api_key"]):
                return cached
            tokens.drop(cached["api_key"])
        result = None
        if flow == "loopback" or (flow == "auto" and (open_browser or browser_available())):
            opener = open_browser or _open_in_browser
            result = loopback.run(client, ask, timeout=timeout, open_browser=opener, show=show)
            if result is None and flow == "loopback":
                raise KeybrokerError("no_browser", "No browser could be opened.")
        if result is None:
            result = device.run(client, ask, timeout=timeout, show=show)
    access, lifetime = result
    if tokens is not None:
        tokens.put(name, access, lifetime)
    return access


def revoke(
    broker: str,
    client_id: str,
    api_key: str | None = None,
    *,
    cache: CachePath = False,
    http: httpx.Client | None = None,
) -> int:
    """Sign the app out (RFC 7009): revoke ``api_key``, or every token of this client in the
    cache; each is dropped from the cache. Returns how many were revoked."""
    base = broker_url(broker)
    tokens = _cache(cache)
    keys = [api_key] if api_key else (tokens.tokens_for(base, client_id) if tokens else [])
    url = f"{base}/oauth/revoke"
    with http or httpx.Client(timeout=30) as client:
        for token in keys:
            try:
                answer = client.post(url, data={"token": token, "client_id": client_id})
            except httpx.HTTPError as exc:
                raise KeybrokerError("unreachable", f"{url}: {type(exc).__name__}") from None
            # RFC 7009 §2.2: 200 whether or not the token was still valid.
            if answer.status_code != 200:
                raise KeybrokerError("invalid_response", f"{url} answered {answer.status_code}")
            if tokens is not None:
                tokens.drop(token)
    return len(keys)
