"""OAuth clients: web origins (no registration) and registered apps with redirect URIs, the
device authorization grant (RFC 8628) or both.

authlib asks a client object whether a redirect URI, response type, grant type or token
endpoint auth method is allowed; both kinds answer here. Every app is a public client
(RFC 6749 §2.1): it proves possession with PKCE, never with a secret.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna
from sqlalchemy import Engine
from sqlmodel import Session

from keybroker.models import RegisteredClient
from keybroker.proxy.scopes import LABELS

# What the consent screen says each scope allows; the pairs behind each: proxy/scopes.py.
SCOPES = LABELS
DEFAULT_SCOPE = "chat models"
DEVICE_CODE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 §3.4
LOOPBACK_HOSTS = {"127.0.0.1", "[::1]", "::1"}


DEFAULT_PORTS = {"http": 80, "https": 443}
# http is allowed for local development on these hosts only (loopback, as in RFC 8252 §8.3).
HTTP_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
IPV4_PART = re.compile(r"0|[1-9][0-9]{0,2}")


def origin_problem(client_id: str) -> str | None:
    """Why ``client_id`` is not a web app's identity, or None when it is one.

    A web app is identified by its origin, and only by the one spelling of it that a browser
    gives as ``URL.origin`` (WHATWG URL, "origin" and "host serializing"): the scheme, "://",
    the host in lowercase ASCII (an internationalised name in its punycode form, IDNA2008 /
    UTS #46), and ":port" only when the port is not the scheme's default; no trailing dot,
    path, query, fragment or userinfo. Any other spelling would be a second identity for the
    same site, with grants and a consent screen of its own, or a look-alike.
    """
    scheme, sep, rest = client_id.partition("://")
    if not sep:
        return "A web app's client_id is its origin, such as https://app.example."
    if scheme.lower() not in DEFAULT_PORTS:
        return "A web app's origin starts with https:// (or http:// on a loopback host)."
    if scheme != scheme.lower():
        return "Write the scheme in lowercase."
    for char, what in (
        ("\\", "backslash"),
        ("@", "user name or password"),
        ("/", "path, not even a final /"),
        ("?", "query"),
        ("#", "fragment"),
    ):
        if char in rest:
            return f"An origin has no {what}: only {scheme}://host or {scheme}://host:port."
    host, port_problem = _split_port(scheme, rest)
    if port_problem:
        return port_problem
    problem = _host_problem(host)
    if problem:
        return problem
    if scheme == "http" and host not in HTTP_HOSTS:
        return "A web app must use https; http is accepted only on localhost and 127.0.0.1."
    return None


def _split_port(scheme: str, rest: str) -> tuple[str, str | None]:
    host, colon, port = rest.rpartition(":") if not rest.endswith("]") else (rest, "", "")
    if not colon:
        return rest, None
    if not port.isascii() or not port.isdigit() or (port != "0" and port.startswith("0")):
        return host, "The port must be a number without leading zeros."
    if not 0 < int(port) < 65536:
        return host, "The port must be between 1 and 65535."
    if int(port) == DEFAULT_PORTS[scheme]:
        return host, f"Leave out the port {port}: it is the default, and URL.origin never shows it."
    return host, None


def _host_problem(host: str) -> str | None:
    if not host:
        return "The origin has no host."
    if host.startswith("["):
        return None if host == "[::1]" else "Of IPv6 addresses only [::1] (loopback) is accepted."
    if not host.isascii():
        return (
            "Write an internationalised host in its ASCII (punycode) form, as URL.origin gives "
            "it. Look-alike letters from other alphabets are how a page passes for another."
        )
    if host != host.lower():
        return "Write the host in lowercase."
    if host.endswith("."):
        return "Leave out the final dot after the host."
    labels = host.split(".")
    if len(host) > 253 or not all(LABEL.fullmatch(label) for label in labels):
        return "The host is not a valid domain name (letters, digits and hyphens in labels)."
    if labels[-1].isdigit():
        # URL parsing reads a name ending in a number as an IPv4 address (WHATWG URL, "ends in
        # a number checker"): only its one dotted-decimal spelling is accepted.
        if len(labels) == 4 and all(IPV4_PART.fullmatch(p) and int(p) < 256 for p in labels):
            return None
        return "Write an IPv4 address in dotted decimal, as URL.origin gives it."
    for label in labels:
        if label.startswith("xn--") and _unicode_label(label) is None:
            return f"The label {label} is not valid punycode."
    return None


def _unicode_label(label: str) -> str | None:
    try:
        decoded = idna.decode(label)
        return decoded if idna.encode(decoded).decode() == label else None
    except idna.IDNAError:
        return None


def canonical_suggestion(client_id: str) -> str | None:
    """The canonical origin a refused client_id was probably meant to be, if there is one.

    Only a valid origin is ever suggested, so an error page never shows other text of the
    request's."""
    scheme, _, rest = client_id.partition("://")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        return None
    rest = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]
    host, _, port = rest.rpartition(":") if not rest.endswith("]") else (rest, "", "")
    host = host if _ else rest
    try:
        host = idna.encode(host.rstrip("."), uts46=True).decode()
    except (idna.IDNAError, UnicodeError):
        return None
    if port.isdigit() and int(port) != DEFAULT_PORTS[scheme]:
        host = f"{host}:{int(port)}"
    suggestion = f"{scheme}://{host}"
    return suggestion if suggestion != client_id and origin_problem(suggestion) is None else None


def unicode_host(host: str) -> str | None:
    """The Unicode form of a host with punycode labels (an IDN), or None if it has none."""
    labels = host.split(".")
    if not any(label.startswith("xn--") for label in labels):
        return None
    return ".".join(_unicode_label(label) or label for label in labels)


def web_origin(client_id: str) -> str | None:
    """``client_id`` if it is exactly a serialised web origin (``origin_problem``), else None."""
    return client_id if origin_problem(client_id) is None else None


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

    @property
    def host(self) -> str | None:
        """A web app's host, as its origin spells it (lowercase ASCII, punycode)."""
        return None if self.origin is None else self.origin.split("://", 1)[1]

    @property
    def idn(self) -> str | None:
        """The Unicode reading of an internationalised host, shown beside the ASCII one."""
        host = self.host
        return None if host is None else unicode_host(host.rsplit(":", 1)[0])

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
