"""JSON endpoints for passkey ceremonies: create account, sign in, add passkey, sign out."""

from __future__ import annotations

import secrets
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url

from keybroker import provider_keys
from keybroker.auth import accounts, passkeys
from keybroker.auth.csrf import is_cross_site
from keybroker.context import Context, get_context
from keybroker.web.ceremony import ceremony_endpoint, consume_ceremony
from keybroker.web.confirm import verify_fresh_assertion
from keybroker.web.http import HTTPProblem, problem
from keybroker.web.notices import Notices


@ceremony_endpoint
async def register_options(request: Request, ctx: Context, body: dict[str, Any]) -> Response:
    handle = secrets.token_bytes(32)
    issued = await run_in_threadpool(ctx.challenges.issue, "register", bytes_to_base64url(handle))
    name = f"keybroker account {issued.id[:6]}"
    options = passkeys.registration_options(
        ctx.rp,
        challenge=issued.challenge,
        user_handle=handle,
        user_name=name,
        exclude_credential_ids=[],
    )
    return JSONResponse({"ceremony": issued.id, "publicKey": options})


@ceremony_endpoint
async def register_verify(request: Request, ctx: Context, body: dict[str, Any]) -> Response:
    handle, challenge = await run_in_threadpool(consume_ceremony, body, ctx, "register")
    assert handle is not None
    cred = passkeys.verify_new_credential(
        body.get("credential"), rp=ctx.rp, expected_challenge=challenge
    )
    if await run_in_threadpool(accounts.find_credential, ctx.engine, cred.credential_id):
        raise HTTPProblem(409, "This passkey is already registered. Sign in with it instead.")
    prf, _ = passkeys.prf_outputs(body.get("credential"))
    user = await run_in_threadpool(
        lambda: accounts.create_account(
            ctx.engine,
            handle=handle,
            name=f"keybroker account {handle[:6]}",
            cred=cred,
            prf=prf,
        )
    )
    response = JSONResponse({"ok": True})
    await run_in_threadpool(ctx.sessions.start, request, response, user.id)
    return response


@ceremony_endpoint
async def login_options(request: Request, ctx: Context, body: dict[str, Any]) -> Response:
    issued = await run_in_threadpool(ctx.challenges.issue, "login", None)
    options = passkeys.authentication_options(ctx.rp, challenge=issued.challenge)
    return JSONResponse({"ceremony": issued.id, "publicKey": options})


@ceremony_endpoint
async def login_verify(request: Request, ctx: Context, body: dict[str, Any]) -> Response:
    _, challenge = await run_in_threadpool(consume_ceremony, body, ctx, "login")
    credential = body.get("credential")
    credential_id, _handle = passkeys.credential_user_handle(credential)
    found = await run_in_threadpool(accounts.find_credential, ctx.engine, credential_id)
    if found is None:
        raise passkeys.UnknownCredentialError()
    passkey, user = found
    assertion = passkeys.verify_assertion(
        credential,
        rp=ctx.rp,
        expected_challenge=challenge,
        stored=accounts.stored_credential(passkey, user),
    )
    await run_in_threadpool(accounts.record_sign_in, ctx.engine, passkey.id, assertion)
    response = JSONResponse({"ok": True})
    await run_in_threadpool(ctx.sessions.start, request, response, user.id)
    return response


@ceremony_endpoint
async def add_options(request: Request, ctx: Context, body: dict[str, Any]) -> Response:
    signed_in = await run_in_threadpool(ctx.sessions.current, request)
    if signed_in is None:
        raise HTTPProblem(401, "Sign in first.")
    existing = await run_in_threadpool(accounts.passkeys_of, ctx.engine, signed_in.user.id)
    issued = await run_in_threadpool(ctx.challenges.issue, "add", signed_in.user.id)
    options = passkeys.registration_options(
        ctx.rp,
        challenge=issued.challenge,
        user_handle=base64url_to_bytes(signed_in.user.webauthn_handle),
        user_name=signed_in.user.name,
        exclude_credential_ids=[base64url_to_bytes(p.credential_id) for p in existing],
    )
    return JSONResponse({"ceremony": issued.id, "publicKey": options})


@ceremony_endpoint
async def add_verify(request: Request, ctx: Context, body: dict[str, Any]) -> Response:
    """A new passkey is a new way into the account, so it needs, beside the session, a fresh
    user-verified assertion by a passkey the account already has (``confirm``): a stolen
    cookie alone must not let the thief add one of their own. The confirming passkey's PRF
    output also opens the vault in strict custody, for the new passkey's key slot."""
    signed_in = await run_in_threadpool(ctx.sessions.current, request)
    if signed_in is None:
        raise HTTPProblem(401, "Sign in first.")
    confirm = body.get("confirm")
    if not isinstance(confirm, dict):
        raise HTTPProblem(400, "Confirm with a passkey you already have first.")
    opener = await verify_fresh_assertion(ctx, signed_in.user.id, confirm)
    user_id, challenge = await run_in_threadpool(consume_ceremony, body, ctx, "add")
    if user_id != signed_in.user.id:
        raise HTTPProblem(400, "This passkey request belongs to another session. Start again.")
    cred = passkeys.verify_new_credential(
        body.get("credential"), rp=ctx.rp, expected_challenge=challenge
    )
    if await run_in_threadpool(accounts.find_credential, ctx.engine, cred.credential_id):
        raise HTTPProblem(409, "This passkey is already registered.")
    name = str(body.get("name") or "").strip()[:100] or "Passkey"
    prf, output = passkeys.prf_outputs(body.get("credential"))
    row = await run_in_threadpool(
        lambda: accounts.add_passkey(
            ctx.engine, user_id=signed_in.user.id, cred=cred, name=name, prf=prf
        )
    )
    slotted = False
    if output is not None:
        proof = provider_keys.PrfProof(row.id, row.credential_id, output)
        try:
            slotted = await run_in_threadpool(
                provider_keys.add_slot, ctx.engine, ctx.ring, signed_in.user.id, proof, opener
            )
        except provider_keys.VaultLockedError:
            slotted = False
    added = Notices(ctx.settings.secret_key).url("/settings", "done", "Passkey added.", "passkeys")
    return JSONResponse({"ok": True, "key_slot": slotted, "redirect": added})


async def sign_out(request: Request) -> Response:
    ctx = get_context(request)
    if is_cross_site(request, expected_origin=ctx.settings.origin, method=request.method):
        return problem(403, "Cross-site request refused.")
    response = RedirectResponse("/", status_code=303)
    await run_in_threadpool(ctx.sessions.end, request, response)
    return response


routes = [
    Route("/auth/register/options", register_options, methods=["POST"]),
    Route("/auth/register/verify", register_verify, methods=["POST"]),
    Route("/auth/login/options", login_options, methods=["POST"]),
    Route("/auth/login/verify", login_verify, methods=["POST"]),
    Route("/auth/passkeys/options", add_options, methods=["POST"]),
    Route("/auth/passkeys/verify", add_verify, methods=["POST"]),
    Route("/auth/signout", sign_out, methods=["POST"]),
]
