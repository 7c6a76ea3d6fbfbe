"""WebAuthn ceremonies on py_webauthn: options out, responses checked in a straight run.

Every check that fails raises its own PasskeyError subclass whose ``message`` is safe to
show. User verification is always required (W3C WebAuthn §7.1 step 15, §7.2 step 17).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    parse_authentication_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

CEREMONY_TIMEOUT_MS = 300_000


class PasskeyError(Exception):
    message = "The passkey could not be verified."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.message)
        if detail:
            self.message = detail


class MalformedCredentialError(PasskeyError):
    message = "The passkey response was malformed."


class UnknownCredentialError(PasskeyError):
    message = "This passkey is not registered here. Create an account first."


class WrongUserError(PasskeyError):
    message = "This passkey belongs to another account."


class VerificationFailedError(PasskeyError):
    message = "The passkey response did not verify."


class BackupStateChangedError(PasskeyError):
    message = "This passkey's backup eligibility changed, which a real authenticator never does."


@dataclass(frozen=True)
class RelyingParty:
    id: str
    name: str
    origin: str


@dataclass(frozen=True)
class NewCredential:
    credential_id: str
    public_key: bytes
    sign_count: int
    transports: list[str]
    aaguid: str
    device_type: str
    backed_up: bool


@dataclass(frozen=True)
class StoredCredential:
    credential_id: str
    user_handle: str
    public_key: bytes
    sign_count: int
    device_type: str


@dataclass(frozen=True)
class Assertion:
    credential_id: str
    new_sign_count: int
    device_type: str
    backed_up: bool


def prf_salt(user_handle: bytes) -> bytes:
    """The account's fixed PRF salt (W3C WebAuthn §10.1.4): derived, so nothing to store."""
    return hashlib.sha256(b"keybroker prf salt v1" + user_handle).digest()


def prf_outputs(credential: object) -> tuple[bool, bytes | None]:
    """Whether the authenticator has PRF, and its first output if it evaluated one.

    The output comes from the client (the browser decrypts hmac-secret); a wrong one only
    fails to open a slot, it cannot open anything else.
    """
    if not isinstance(credential, dict):
        return False, None
    prf = (credential.get("clientExtensionResults") or {}).get("prf")
    if not isinstance(prf, dict):
        return False, None
    first = (prf.get("results") or {}).get("first")
    output = None
    if isinstance(first, str):
        try:
            output = base64url_to_bytes(first)
        except ValueError:
            output = None
        if output is not None and len(output) != 32:
            output = None
    return bool(prf.get("enabled")) or output is not None, output


def registration_options(
    rp: RelyingParty,
    *,
    challenge: bytes,
    user_handle: bytes,
    user_name: str,
    exclude_credential_ids: list[bytes],
) -> dict[str, Any]:
    options = generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_id=user_handle,
        user_name=user_name,
        user_display_name=user_name,
        challenge=challenge,
        timeout=CEREMONY_TIMEOUT_MS,
        # Discoverable credentials: sign-in needs no username (W3C WebAuthn §6.2.2).
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=c) for c in exclude_credential_ids],
    )
    result: dict[str, Any] = json.loads(options_to_json(options))
    # PRF evaluated at creation where the authenticator can (hmac-secret-mc), so a new
    # passkey can get its key slot at once.
    result["extensions"] = {"prf": {"eval": {"first": bytes_to_base64url(prf_salt(user_handle))}}}
    return result


def authentication_options(rp: RelyingParty, *, challenge: bytes) -> dict[str, Any]:
    options = generate_authentication_options(
        rp_id=rp.id,
        challenge=challenge,
        timeout=CEREMONY_TIMEOUT_MS,
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    result: dict[str, Any] = json.loads(options_to_json(options))
    return result


def _credential_dict(credential: object) -> dict[str, Any]:
    if not isinstance(credential, dict) or not isinstance(credential.get("id"), str):
        raise MalformedCredentialError()
    return credential


def verify_new_credential(
    credential: object, *, rp: RelyingParty, expected_challenge: bytes
) -> NewCredential:
    data = _credential_dict(credential)
    try:
        verified = verify_registration_response(
            credential=data,
            expected_challenge=expected_challenge,
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            require_user_verification=True,
        )
    except WebAuthnException as exc:
        raise VerificationFailedError(f"The passkey was refused: {exc}") from None
    transports = data.get("response", {}).get("transports") or []
    known = {t.value for t in AuthenticatorTransport}
    return NewCredential(
        credential_id=bytes_to_base64url(verified.credential_id),
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        transports=[t for t in transports if isinstance(t, str) and t in known],
        aaguid=verified.aaguid,
        device_type=verified.credential_device_type.value,
        backed_up=verified.credential_backed_up,
    )


def credential_user_handle(credential: object) -> tuple[str, str | None]:
    """The credential id and user handle an assertion names, before any lookup."""
    data = _credential_dict(credential)
    try:
        parsed = parse_authentication_credential_json(data)
    except WebAuthnException:
        raise MalformedCredentialError() from None
    handle = parsed.response.user_handle
    return data["id"], bytes_to_base64url(handle) if handle else None


def verify_assertion(
    credential: object, *, rp: RelyingParty, expected_challenge: bytes, stored: StoredCredential
) -> Assertion:
    data = _credential_dict(credential)
    credential_id, user_handle = credential_user_handle(data)
    if credential_id != stored.credential_id:
        raise UnknownCredentialError()
    # The user handle the authenticator returns must be the credential's own account's
    # (W3C WebAuthn §7.2 step 6).
    if user_handle is not None and user_handle != stored.user_handle:
        raise WrongUserError()
    try:
        verified = verify_authentication_response(
            credential=data,
            expected_challenge=expected_challenge,
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            credential_public_key=stored.public_key,
            credential_current_sign_count=stored.sign_count,
            require_user_verification=True,
        )
    except WebAuthnException as exc:
        raise VerificationFailedError(f"The passkey was refused: {exc}") from None
    # Backup eligibility is fixed at creation (W3C WebAuthn §6.1.3): a change means a clone
    # or a forged response.
    if verified.credential_device_type.value != stored.device_type:
        raise BackupStateChangedError()
    return Assertion(
        credential_id=credential_id,
        new_sign_count=verified.new_sign_count,
        device_type=verified.credential_device_type.value,
        backed_up=verified.credential_backed_up,
    )
