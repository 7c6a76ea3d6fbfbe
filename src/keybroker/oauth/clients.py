"""OAuth clients: web origins (no registration) and registered apps with redirect URIs, the
device authorization grant (RFC 8628) or both.

authlib asks a client object whether a redirect URI, response type, grant type or token
endpoint auth method is allowed; both kinds answer here. Every app is a public client
(RFC 6749 §2.1): it proves possession with PKCE, never with a secret.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import Engine
from sqlmodel import Session

from keybroker.models import RegisteredClient
from keybroker.proxy.scopes import LABELS

# What the consent screen says each scope allows; the pairs behind each: proxy/scopes.py.
SCOPES = LABELS
DEFAULT_SCOPE = "chat models"
DEVICE_CODE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 §3.4
LOOPBACK_HOSTS = {"127.0.0.1", "[::1]", "::1"}


def web_origin(client_id: str) -> str | None:
    """``client_id`` if it is exactly a serialised web origin (scheme://host[:port]), else None.

    https only, except loopback hosts for local development.
    """
    try:
        parts = urlsplit(client_id)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host or parts.username or parts.password or parts.path or parts.query:
        return None
    if parts.fragment or client_id.endswith(("#", "?")):
        return None
    if parts.scheme == "http" and host not in ("localhost", "127.0.0.1", "::1"):
        return None
    if parts.scheme not in ("http", "https"):
        return None
    netloc = f"[{host}]" if ":" in host else host
    canonical = f"{parts.scheme}://{netloc}" + (f":{port}" if port is not None else "")
    return client_id if canonical == client_id else None


def redirect_matches(registered: str, requested: str) -> bool:
    """Exact string match (OAuth 2.1 §2.3.1), except that a loopback redirect may use any port
    (RFC 8252 §7.3)."""
    if requested == registered:
        return True
    try:
        reg, req = urlsplit(registered), urlsplit(requested)
        req_port = req.port
    except ValueError:
        return False
    if reg.scheme != "http" or reg.hostname not in LOOPBACK_HOSTS or reg.port is not None:
        return False
    # Compare everything but the port, character for character.
    host = reg.netloc
    return (
        req.scheme == "http"
        and req_port is not None
        and req.netloc == f"{host}:{req_port}"
        and req.path == reg.path
        and req.query == reg.query
        and not req.fragment
        and "#" not in requested
    )


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    redirect_uris: tuple[str, ...]
    origin: str | None  # set for web-origin clients, which get web_message responses
    device: bool = False  # registered with --device: may use the device authorization grant

    # authlib's ClientMixin, as far as the authorization-code grant uses it.
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # A web-origin client's response goes to its origin by postMessage, never a redirect.
        return self.origin

    def get_allowed_scope(self, scope: str | None) -> str | None:
        asked = list(dict.fromkeys((scope or DEFAULT_SCOPE).split()))
        if not asked or any(s not in SCOPES for s in asked):
            return None  # authlib answers invalid_scope (RFC 6749 §4.1.2.1)
        return " ".join(asked)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return any(redirect_matches(r, redirect_uri) for r in self.redirect_uris)

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == DEVICE_CODE_GRANT_TYPE:
            return self.device
        return grant_type == "authorization_code" and (
            self.origin is not None or bool(self.redirect_uris)
        )


def find_client(engine: Engine, client_id: str) -> Client | None:
    origin = web_origin(client_id)
    if origin is not None:
        return Client(client_id=origin, name=origin, redirect_uris=(), origin=origin)
    if len(client_id) > 64:
        return None
    with Session(engine) as db:
        row = db.get(RegisteredClient, client_id)
    if row is None:
        return None
    return Client(
        row.id, row.name, tuple(json.loads(row.redirect_uris)), origin=None, device=row.device
    )


class ClientRegistrationError(ValueError):
    pass


def check_redirect_uri_for_registration(uri: str) -> None:
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise ClientRegistrationError(f"not a URL: {uri!r}") from None
    if parts.fragment or "#" in uri:
        raise ClientRegistrationError(f"a redirect URI cannot have a fragment: {uri!r}")
    if parts.username or parts.password:
        raise ClientRegistrationError(f"a redirect URI cannot carry userinfo: {uri!r}")
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1"):
        return  # loopback, RFC 8252 §7.3
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme not in ("http", "https") and "." in parts.scheme:
        return  # private-use URI scheme, RFC 8252 §7.1 (reverse domain name)
    raise ClientRegistrationError(
        f"use https, a loopback http://127.0.0.1/... URI or a reverse-domain scheme: {uri!r}"
    )


def register_client(
    engine: Engine, *, name: str, redirect_uris: list[str], device: bool = False
) -> str:
    """Register an app; ``device`` lets it use the device flow (it may have redirect URIs too)."""
    if not redirect_uris and not device:
        raise ClientRegistrationError("give at least one --redirect-uri, or --device")
    for uri in redirect_uris:
        check_redirect_uri_for_registration(uri)
    client_id = "kbc_" + secrets.token_hex(12)
    with Session(engine) as db:
        db.add(
            RegisteredClient(
                id=client_id,
                name=name[:200],
                redirect_uris=json.dumps(redirect_uris),
                device=device,
            )
        )
        db.commit()
    return client_id
