"""Fresh passkey confirmation for consequential actions: "Allow" on the consent screen,
saving, replacing or deleting the key, adding or removing a passkey, switching custody,
deleting the account.

A signed-in session is not enough for these: the owner confirms with a new user-verified
assertion by one of the account's own passkeys (W3C WebAuthn §7.2, challenge single use).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url

from keybroker.auth import accounts, passkeys
from keybroker.auth.challenges import ChallengeError
from keybroker.auth.sessions import SignedIn
from keybroker.context import Context
from keybroker.provider_keys import CustodyError, PrfProof, VaultLockedError
from keybroker.web.ceremony import ceremony_endpoint
from keybroker.web.http import HTTPProblem, problem

PURPOSE = "confirm"


@ceremony_endpoint
async def confirm_options(request: Request, ctx: Context, body: dict[str, Any]) -> Response:
    signed_in = await run_in_threadpool(ctx.sessions.current, request)
    if signed_in is None:
        raise HTTPProblem(401, "Sign in first.")
    return await confirmation_options(ctx, signed_in, PURPOSE, signed_in.user.id)


async def confirmation_options(
    ctx: Context, signed_in: SignedIn, purpose: str, subject: str
) -> JSONResponse:
    """Assertion options for the account's own passkeys, under a challenge issued for
    ``purpose`` and ``subject`` (what the confirmation may be spent on)."""
    mine = await run_in_threadpool(accounts.passkeys_of, ctx.engine, signed_in.user.id)
    issued = await run_in_threadpool(ctx.challenges.issue, purpose, subject)
    options = passkeys.authentication_options(ctx.rp, challenge=issued.challenge)
    options["allowCredentials"] = [{"type": "public-key", "id": p.credential_id} for p in mine]
    # Each passkey evaluates the account's PRF salt: its output opens that passkey's key slot.
    salt = bytes_to_base64url(passkeys.prf_salt(base64url_to_bytes(signed_in.user.webauthn_handle)))
    options["extensions"] = {
        "prf": {"evalByCredential": {p.credential_id: {"first": salt} for p in mine}}
    }
    return JSONResponse({"ceremony": issued.id, "publicKey": options})


async def verify_fresh_assertion(
    ctx: Context,
    user_id: str,
    body: dict[str, Any],
    *,
    purpose: str = PURPOSE,
    subject: str | None = None,
) -> PrfProof | None:
    """Raise unless ``body`` carries a new assertion by one of ``user_id``'s passkeys, under
    a challenge issued for ``purpose`` and ``subject`` (default: the account itself); return
    that passkey's PRF output when the authenticator gave one."""
    ceremony = body.get("ceremony")
    if not isinstance(ceremony, str) or len(ceremony) > 64:
        raise HTTPProblem(400, "Confirm with your passkey first.")
    issued = await run_in_threadpool(ctx.challenges.consume, ceremony, expected_purpose=purpose)
    if issued.subject != (user_id if subject is None else subject):
        raise HTTPProblem(400, "This confirmation belongs to another session. Start again.")
    credential = body.get("credential")
    credential_id, _ = passkeys.credential_user_handle(credential)
    found = await run_in_threadpool(accounts.find_credential, ctx.engine, credential_id)
    if found is None or found[1].id != user_id:
        raise passkeys.UnknownCredentialError("That passkey is not one of this account's.")
    passkey, user = found
    assertion = passkeys.verify_assertion(
        credential,
        rp=ctx.rp,
        expected_challenge=issued.challenge,
        stored=accounts.stored_credential(passkey, user),
    )
    _, output = passkeys.prf_outputs(credential)
    await run_in_threadpool(
        lambda: accounts.record_sign_in(
            ctx.engine, passkey.id, assertion, action="passkey.confirmed", prf=output is not None
        )
    )
    return None if output is None else PrfProof(passkey.id, passkey.credential_id, output)


# What can go wrong between a confirmed request arriving and its action being done.
CONFIRMATION_ERRORS = (
    HTTPProblem,
    ChallengeError,
    passkeys.PasskeyError,
    VaultLockedError,
    CustodyError,
)


def confirmation_failure(exc: Exception) -> tuple[int, str, str | None]:
    """Status, safe message and code for one of CONFIRMATION_ERRORS."""
    if isinstance(exc, HTTPProblem):
        return exc.status, exc.message, exc.code
    if isinstance(exc, VaultLockedError | CustodyError):
        return 409, exc.message, None
    assert isinstance(exc, ChallengeError | passkeys.PasskeyError)
    return 400, exc.message, None


def confirmation_problem(exc: Exception) -> JSONResponse:
    """The JSON answer for one of CONFIRMATION_ERRORS."""
    return problem(*confirmation_failure(exc))


routes = [Route("/auth/confirm/options", confirm_options, methods=["POST"])]
