"""What both flows share: the request they start with, form posts and the token answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from keybroker_client.errors import KeybrokerError


@dataclass(frozen=True)
class Ask:
    """What the app asks for; the owner may narrow all of it on the consent screen."""

    broker: str
    client_id: str
    scopes: Sequence[str]
    models: Sequence[str]
    budget_usd: float | None

    def params(self) -> dict[str, str]:
        params = {"client_id": self.client_id, "scope": " ".join(self.scopes)}
        if self.models:
            params["models"] = " ".join(self.models)
        if self.budget_usd is not None:
            params["budget"] = f"{self.budget_usd:g}"
        return params


def broker_url(broker: str) -> str:
    parts = urlsplit(broker)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the broker must be an http(s) URL, not {broker!r}")
    return broker.rstrip("/")


def post_form(http: httpx.Client, url: str, data: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST a form; the status and the JSON object answered."""
    try:
        response = http.post(url, data=data)
    except httpx.HTTPError as exc:
        raise KeybrokerError("unreachable", f"{url}: {type(exc).__name__}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise KeybrokerError(
            "invalid_response", f"{url} answered {response.status_code} without a JSON object"
        )
    return response.status_code, body


def oauth_error(url: str, status: int, body: dict[str, Any]) -> KeybrokerError:
    """An OAuth error answer (RFC 6749 §5.2) as the package's error."""
    error = body.get("error")
    description = body.get("error_description") or ""
    if error == "access_denied":
        return KeybrokerError("access_denied", description or "The owner denied access.")
    if isinstance(error, str) and error:
        return KeybrokerError("refused", f"{error}: {description}".rstrip(": "))
    return KeybrokerError("invalid_response", f"{url} answered {status} without an error code")


def access(body: dict[str, Any]) -> dict[str, str]:
    """The token endpoint's answer as ``{"api_key", "base_url"}`` (``OpenAI(**access)``)."""
    token, base_url = body.get("access_token"), body.get("base_url")
    if not isinstance(token, str) or not token or not isinstance(base_url, str):
        raise KeybrokerError("invalid_response", "the token answer lacks access_token or base_url")
    try:
        broker_url(base_url)
    except ValueError:
        raise KeybrokerError("invalid_response", "the token answer's base_url is no URL") from None
    return {"api_key": token, "base_url": base_url}


def expires_in(body: dict[str, Any]) -> float | None:
    value = body.get("expires_in")
    return float(value) if isinstance(value, int | float) and value > 0 else None
