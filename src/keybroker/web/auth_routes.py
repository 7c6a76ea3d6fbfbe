"""JSON endpoints for passkey ceremonies: create account, sign in, add passkey, sign out."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url

from keybroker import provider_keys
from keybroker.auth import accounts, passkeys
from keybroker.auth.challenges import ChallengeError
from keybroker.auth.csrf import is_cross_site
from keybroker.context import Context, get_context
from keybroker.web import abuse
from keybroker.web.http import HTTPProblem, problem, read_json_object

Handler = Callable[[Request], Awaitable[Response]]


def ceremony_endpoint(
    func: Callable[[Request, Context, dict[str, Any]], Awaitable[Response]],
) -> Handler:
    """Same-origin check, bounded JSON body, and one error shape for every ceremony step."""

    async def endpoint(request: Request) -> Response:
        ctx = get_context(request)
        if is_cross_site(request, expected_origin=ctx.settings.origin, method=request.method):
            return problem(403, "Cross-site request refused.")
        try:
            await abuse.check(
                ctx.proxy.limits,
                abuse.CEREMONY_PER_IP,
                abuse.client_ip(request),
                ctx.settings.abuse_limit_scale,
            )
            body = await read_json_object(request)
            return await func(request, ctx, body)
        except abuse.TooManyAttempts as exc:
            response = problem(429, exc.message)
            response.headers["retry-after"] = str(exc.retry_after)
            return response
        except HTTPProblem as exc:
            return problem(exc.status, exc.message)
        except (ChallengeError, passkeys.PasskeyError) as exc:
            return problem(400, exc.message)

    return endpoint


def _ceremony(body: dict[str, Any], ctx: Context, purpose: str) -> tuple[str | None, bytes]:
    ceremony = body.get("ceremony")
    if not isinstance(ceremony, str) or len(ceremony) > 64:
        raise HTTPProblem(400, "Missing ceremony id. Start again.")
    issued = ctx.challenges.consume(ceremony, expected_purpose=purpose)
    return issued.subject, issued.challenge


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
    handle, challenge = await run_in_threadpool(_ceremony, body, ctx, "register")
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
    _, challenge = await run_in_threadpool(_ceremony, body, ctx, "login")
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
    stored = await run_in_threadpool(provider_keys.stored_key, ctx.engine, signed_in.user.id)
    # In strict custody a new passkey's slot can only be made with an existing passkey's
    # PRF output: the page confirms with one first (``confirm``).
    return JSONResponse(
        {"ceremony": issued.id, "publicKey": options, "confirm": bool(stored and stored.strict)}
    )


@ceremony_endpoint
async def add_verify(request: Request, ctx: Context, body: dict[str, Any]) -> Response:
    signed_in = await run_in_threadpool(ctx.sessions.current, request)
    if signed_in is None:
        raise HTTPProblem(401, "Sign in first.")
    user_id, challenge = await run_in_threadpool(_ceremony, body, ctx, "add")
    if user_id != signed_in.user.id:
        raise HTTPProblem(400, "This passkey request belongs to another session. Start again.")
    cred = passkeys.verify_new_credential(
        body.get("credential"), rp=ctx.rp, expected_challenge=challenge
    )
    if await run_in_threadpool(accounts.find_credential, ctx.engine, cred.credential_id):
        raise HTTPProblem(409, "This passkey is already registered.")
    opener = None
    if isinstance(body.get("confirm"), dict):
        from keybroker.web.confirm import verify_fresh_assertion

        opener = await verify_fresh_assertion(ctx, signed_in.user.id, body["confirm"])
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
    return JSONResponse({"ok": True, "key_slot": slotted})


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
