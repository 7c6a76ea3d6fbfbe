"""The device authorization grant (RFC 8628) on authlib's implementation.

``POST /oauth/device_authorization`` (§3.1, §3.2) issues a device code and a user code to a
registered device client; the app then polls ``POST /oauth/token`` with
``grant_type=urn:ietf:params:oauth:grant-type:device_code`` (§3.4) and gets, once the owner
has allowed it at ``/device``, the same answer as the authorization-code flow. The codes and
the poll's answers are kept in oauth/device_codes.py.
"""

from __future__ import annotations

from typing import Any

from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749.errors import InvalidScopeError, UnauthorizedClientError
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint as _DeviceAuthorizationEndpoint
from authlib.oauth2.rfc8628 import DeviceCodeGrant as _DeviceCodeGrant

from keybroker.oauth import device_codes
from keybroker.oauth.approval import Consent
from keybroker.oauth.clients import DEVICE_CODE_GRANT_TYPE, Client
from keybroker.oauth.server import AuthorizationServer, StarletteOAuth2Request

VERIFICATION_PATH = "/device"


class DeviceAuthorizationEndpoint(_DeviceAuthorizationEndpoint):  # type: ignore[misc]
    """RFC 8628 §3.1-3.2 for public clients registered with ``--device``."""

    CLIENT_AUTH_METHODS = ["none"]
    EXPIRES_IN = int(device_codes.CODE_TTL.total_seconds())
    INTERVAL = device_codes.INTERVAL
    server: AuthorizationServer

    def get_verification_uri(self) -> str:
        return self.server.issuer + VERIFICATION_PATH

    def create_endpoint_response(
        self, request: StarletteOAuth2Request
    ) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        # authlib's own version hands save_device_credential neither the client's scope
        # check nor the request's hints (models, budget), so this one does the same steps.
        client: Client = self.authenticate_client(request)
        if not client.check_grant_type(DEVICE_CODE_GRANT_TYPE):
            raise UnauthorizedClientError(
                "This client is not registered for the device flow (keybroker clients add"
                " --device)."
            )
        scope = client.get_allowed_scope(request.payload.scope)
        if scope is None:
            raise InvalidScopeError()
        data = request.payload.data
        issued = device_codes.issue(
            self.server.engine,
            client_id=client.client_id,
            scope=scope,
            hints={k: data[k] for k in device_codes.HINTS if k in data},
        )
        verification_uri = self.get_verification_uri()
        body = {
            "device_code": issued.device_code,
            "user_code": issued.user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": f"{verification_uri}?user_code={issued.user_code}",
            "expires_in": self.EXPIRES_IN,
            "interval": self.INTERVAL,
        }
        return 200, body, default_json_headers


class DeviceCodeGrant(_DeviceCodeGrant):  # type: ignore[misc]
    """RFC 8628 §3.4-3.5: polling answers authorization_pending, slow_down, access_denied,
    expired_token, or the token (once)."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
    server: AuthorizationServer

    def query_device_credential(self, device_code: str) -> device_codes.DeviceCredential | None:
        return device_codes.find_by_device_code(self.server.engine, device_code)

    def validate_device_credential(self, credential: device_codes.DeviceCredential) -> Consent:
        return device_codes.poll(self.server.engine, credential)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        result: tuple[int, dict[str, Any], list[tuple[str, str]]] = super().create_token_response()
        consent: Consent = self.request.user
        assert consent.token is not None
        device_codes.record_grant(
            self.server.engine, self.request.credential.row.id, consent.token.grant_id
        )
        return result
