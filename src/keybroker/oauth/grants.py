"""The authorization-code grant (OAuth 2.1): PKCE S256 required, codes single use, 10 minutes.

Codes are stored as SHA-256 hashes. The owner's key travels from consent to redemption sealed
under a key derived from the code itself, so a database reader holding a code row opens
nothing. A second redemption of a code fails and revokes the grant the first one created
(RFC 6749 §4.1.2, OAuth 2.1 §4.1.3).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import update
from sqlmodel import Session, col

from keybroker import grants as grant_store
from keybroker.crypto import tokens, vault
from keybroker.grants import Choices
from keybroker.models import AuthorizationCode, utcnow
from keybroker.oauth import device
from keybroker.oauth.approval import Consent
from keybroker.oauth.clients import Client
from keybroker.oauth.server import AuthorizationServer, StarletteOAuth2Request

CODE_TTL = timedelta(minutes=10)
CODE_USE = "authorization-code"


@dataclass(frozen=True)
class StoredCode:
    code: str = field(repr=False)
    row: AuthorizationCode

    @property
    def code_challenge(self) -> str:
        return self.row.code_challenge

    @property
    def code_challenge_method(self) -> str:
        return "S256"

    def get_redirect_uri(self) -> str | None:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope


def _code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _code_key(code: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"keybroker code",
        info=b"keybroker authorization code v1",
    ).derive(code.encode())


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only, required at the authorization endpoint (OAuth 2.1 §4.1.1)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError(
                "Missing 'code_challenge': PKCE is required.", state=data.get("state")
            )
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError(
                "'code_challenge_method' must be S256.", state=data.get("state")
            )
        super().validate_code_challenge(grant, redirect_uri)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
    AUTHORIZATION_CODE_LENGTH = 43
    server: AuthorizationServer

    def save_authorization_code(self, code: str, request: StarletteOAuth2Request) -> None:
        consent: Consent = request.user
        client: Client = request.client
        sealed = vault.seal_direct(
            consent.provider_key.encode(),
            _code_key(code),
            binding=vault.Binding(_code_hash(code), CODE_USE),
        )
        with Session(self.server.engine) as db:
            db.add(
                AuthorizationCode(
                    id=_code_hash(code),
                    user_id=consent.user_id,
                    client_id=client.client_id,
                    redirect_uri=request.payload.redirect_uri,
                    code_challenge=request.payload.data["code_challenge"],
                    scope=" ".join(consent.choices.scopes),
                    choices=consent.choices.to_json(),
                    sealed_key=sealed,
                    expires_at=utcnow() + CODE_TTL,
                )
            )
            db.commit()

    def query_authorization_code(self, code: str, client: Client) -> StoredCode | None:
        engine = self.server.engine
        with Session(engine) as db:
            row = db.get(AuthorizationCode, _code_hash(code))
            if row is None or row.client_id != client.client_id:
                return None
            # The UPDATE's row count decides who redeemed it: two racing requests cannot both.
            claimed = db.execute(
                update(AuthorizationCode)
                .where(
                    col(AuthorizationCode.id) == row.id, col(AuthorizationCode.used_at).is_(None)
                )
                .values(used_at=utcnow())
            )
            db.commit()
            if getattr(claimed, "rowcount", 0) != 1:
                db.refresh(row)
                if row.grant_id:
                    grant_store.revoke(engine, row.grant_id, reason="grant.revoked_code_replay")
                return None
            if row.expires_at < utcnow():
                return None
            return StoredCode(code, row)

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        consent: Consent = self.request.user
        assert consent.token is not None
        with Session(self.server.engine) as db:
            db.execute(
                update(AuthorizationCode)
                .where(col(AuthorizationCode.id) == authorization_code.row.id)
                .values(sealed_key=None, grant_id=consent.token.grant_id)
            )
            db.commit()

    def authenticate_user(self, authorization_code: StoredCode) -> Consent | None:
        row = authorization_code.row
        if row.sealed_key is None:
            return None
        key = vault.open_direct(
            row.sealed_key,
            _code_key(authorization_code.code),
            expected_binding=vault.Binding(row.id, CODE_USE),
        )
        return Consent(row.user_id, Choices.from_json(row.choices), key.decode())


def save_token(
    server: AuthorizationServer, token: dict[str, Any], request: StarletteOAuth2Request
) -> None:
    consent: Consent = request.user
    client: Client = request.client
    assert consent.token is not None
    grant_store.create_grant(
        server.engine,
        server.ring,
        token=consent.token,
        user_id=consent.user_id,
        client_id=client.client_id,
        client_name=client.name,
        web_origin=client.origin,
        choices=consent.choices,
        provider_key=consent.provider_key,
    )


@dataclass(frozen=True)
class RevocableToken:
    grant: grant_store.GrantView

    def check_client(self, client: Client) -> bool:
        return self.grant.client_id == client.client_id


class RevocationEndpoint(_RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009: an app signs out by revoking its own token."""

    CLIENT_AUTH_METHODS = ["none"]
    server: AuthorizationServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> RevocableToken | None:
        try:
            token = tokens.parse_token(token_string)
        except tokens.MalformedTokenError:
            return None
        grant = grant_store.get_grant(self.server.engine, token.grant_id)
        if grant is None or not tokens.secret_matches(token, grant.secret_hash):
            return None
        return RevocableToken(grant)

    def revoke_token(self, token: RevocableToken, request: StarletteOAuth2Request) -> None:
        grant_store.revoke(self.server.engine, token.grant.id, reason="grant.revoked_by_app")


def build_server(engine: Any, ring: Any, *, issuer: str, base_url: str) -> AuthorizationServer:
    server = AuthorizationServer(engine, ring, issuer=issuer, base_url=base_url)
    server.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(required=True)])
    server.register_endpoint(RevocationEndpoint)
    # RFC 8628: the device authorization endpoint and its grant at the token endpoint.
    server.register_grant(device.DeviceCodeGrant)
    server.register_endpoint(device.DeviceAuthorizationEndpoint)
    return server
