"""A Starlette adapter for authlib's AuthorizationServer, shaped like its Flask integration.

Starlette reads bodies asynchronously and authlib is synchronous, so a route first reads the
request into an ``HTTPInput`` and then runs the server in a worker thread; ``handle_response``
returns an ``OAuthResult`` that the route turns into a Starlette response.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from authlib.oauth2 import AuthorizationServer as _AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from authlib.oauth2.rfc9207 import IssuerParameter
from sqlalchemy import Engine
from starlette.responses import JSONResponse, Response

from keybroker.crypto import tokens
from keybroker.crypto.keyring import KeyRing
from keybroker.oauth.clients import Client, find_client


@dataclass(frozen=True)
class HTTPInput:
    """The parts of an HTTP request authlib reads, captured before leaving the event loop."""

    method: str
    url: str
    headers: dict[str, str]
    query: list[tuple[str, str]]
    form: list[tuple[str, str]] = field(default_factory=list)


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        self._data = {k: v[0] for k, v in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class StarletteOAuth2Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, given: HTTPInput) -> None:
        super().__init__(method=given.method, uri=given.url, headers=given.headers)
        self._args = dict(given.query)
        self._form = dict(given.form)
        self.payload = _Payload(given.query + given.form)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass
class OAuthResult:
    status: int
    body: dict[str, Any] | str
    headers: list[tuple[str, str]]

    @property
    def location(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "location"), None)

    @location.setter
    def location(self, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != "location"]
        self.headers.append(("Location", value))

    def params(self) -> dict[str, str]:
        """The query parameters of a redirect response (code or error, state, iss)."""
        return dict(parse_qsl(urlsplit(self.location or "").query))

    def to_response(self, extra_headers: dict[str, str] | None = None) -> Response:
        headers = {k.lower(): v for k, v in self.headers if k.lower() != "content-type"}
        headers.update({k.lower(): v for k, v in (extra_headers or {}).items()})
        if isinstance(self.body, dict):
            return JSONResponse(self.body, status_code=self.status, headers=headers)
        return Response(self.body, status_code=self.status, headers=headers)


class _Issuer(IssuerParameter):  # type: ignore[misc]
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


class AuthorizationServer(_AuthorizationServer):  # type: ignore[misc]
    def __init__(self, engine: Engine, ring: KeyRing, *, issuer: str, base_url: str) -> None:
        super().__init__(scopes_supported=None)
        self.engine = engine
        self.ring = ring
        self.issuer = issuer
        self.base_url = base_url
        self.register_token_generator("default", self._generate_token)
        self.register_extension(_Issuer(issuer))

    def query_client(self, client_id: str) -> Client | None:
        return find_client(self.engine, client_id)

    def save_token(self, token: dict[str, Any], request: StarletteOAuth2Request) -> None:
        from keybroker.oauth.grants import save_token

        save_token(self, token, request)

    def _generate_token(
        self,
        grant_type: str,
        client: Client,
        user: Any = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = False,
    ) -> dict[str, Any]:
        token = tokens.new_token(tokens.new_grant_id())
        user.token = token
        return {
            "access_token": str(token),
            "token_type": "Bearer",
            "expires_in": user.choices.days * 86400,
            "scope": scope or "",
            "base_url": self.base_url,
        }

    def create_oauth2_request(self, request: HTTPInput) -> StarletteOAuth2Request:
        return StarletteOAuth2Request(request)

    def create_json_request(self, request: HTTPInput) -> StarletteOAuth2Request:
        return StarletteOAuth2Request(request)

    def handle_response(self, status: int, body: Any, headers: Any) -> OAuthResult:
        return OAuthResult(
            status, body if isinstance(body, dict) else str(body or ""), list(headers or [])
        )

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None


def with_params(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return urlunsplit(parts._replace(query=query))


def metadata(issuer: str) -> dict[str, Any]:
    """RFC 8414 authorization server metadata."""
    from authlib.oauth2 import rfc8414, rfc9207

    from keybroker.oauth.clients import DEVICE_CODE_GRANT_TYPE, SCOPES

    data = rfc8414.AuthorizationServerMetadata(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/oauth/token",
            "revocation_endpoint": f"{issuer}/oauth/revoke",
            "device_authorization_endpoint": f"{issuer}/oauth/device_authorization",  # RFC 8628
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "web_message"],
            "grant_types_supported": ["authorization_code", DEVICE_CODE_GRANT_TYPE],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": list(SCOPES),
            "authorization_response_iss_parameter_supported": True,
        }
    )
    data.validate(metadata_classes=[rfc9207.AuthorizationServerMetadata])
    result: dict[str, Any] = json.loads(json.dumps(data))
    return result
