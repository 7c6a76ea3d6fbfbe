"""The owner's side of the device flow (RFC 8628 §3.3): enter the code the app shows, sign
in with a passkey, and answer the same consent screen as any app, which says plainly that a
device is asking. The app learns the answer by polling the token endpoint.

Code entry is limited per network, per code and (for visitors not signed in) in total, and
wrong codes are logged (§5.1), so user codes cannot be found by guessing. A correct code
binds the request to this browser: a cookie holds the request's random id and the code, and
``/device/request`` shows only the request that cookie names. A link to someone else's
request therefore leads nowhere: the owner must type the code themselves, and the consent
screen shows it to compare with the device (§5.4, remote phishing). Allow is confirmed by a
passkey assertion whose challenge is bound to that request and action; Deny also needs the
cookie.

Neither the code nor the request id sits in a URL the server sees, so neither reaches the
access log or browser history: ``?user_code=`` (the verification_uri_complete) is moved into
a short-lived cookie by a redirect and only fills the field (the access log also drops that
query, see keybroker.access_log).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from keybroker.auth.csrf import is_cross_site
from keybroker.context import Context, get_context
from keybroker.grants import ChoiceError
from keybroker.oauth import device_codes
from keybroker.oauth.clients import find_client
from keybroker.web import abuse
from keybroker.web.ceremony import ceremony_endpoint
from keybroker.web.confirm import CONFIRMATION_ERRORS, confirmation_options, confirmation_problem
from keybroker.web.consent import consent_steps, owner_consent
from keybroker.web.forms import json_guard, read_form
from keybroker.web.http import HTTPProblem, problem, read_json_object
from keybroker.web.pages import render

logger = logging.getLogger("keybroker.device")

FORM_LIMIT = 4 * 1024
WRONG_CODE = "That code is not valid, or it has expired or been used. Check it and try again."
GONE = "This request has expired or has already been answered. Start again on your device."
NOT_HERE = "Enter the code your device shows to continue."
ENTERED_COOKIE = "kb_device"  # "<request id>.<user code>": the request entered here
PREFILL_COOKIE = "kb_device_code"  # the verification_uri_complete's code, to fill the field
COOKIE_AGE = int(device_codes.CODE_TTL.total_seconds())
# A challenge for confirming Allow on one device request: its subject names the account, the
# request and the action, so it cannot be spent on another request or action.
CONFIRM_PURPOSE = "confirm-device"
DONE = {
    "allow": "Allowed. Return to your device: the app gets its access within a few seconds.",
    "deny": "Denied. The app on your device has been told.",
}


def _page(
    request: Request, user_code: str = "", error: str | None = None, status: int = 200
) -> Response:
    return render(request, "device.html", status, user_code=user_code, error=error)


def _dashed(normalized: str) -> str:
    return f"{normalized[:4]}-{normalized[4:]}"


def _set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        max_age=COOKIE_AGE,
        path="/device",
        secure=get_context(request).settings.secure_cookies,
        httponly=True,
        samesite="lax",
    )


async def device_page(request: Request) -> Response:
    if "user_code" in request.query_params:
        # The verification_uri_complete: move the code out of the URL (history, logs).
        given = device_codes.normalize_user_code(request.query_params["user_code"][:20])
        response: Response = RedirectResponse("/device", status_code=303)
        if given:
            _set_cookie(request, response, PREFILL_COOKIE, given)
        return response
    given = device_codes.normalize_user_code(request.cookies.get(PREFILL_COOKIE, "")[:20])
    response = _page(request, _dashed(given) if given else "")
    if given:
        response.delete_cookie(PREFILL_COOKIE, path="/device")
    return response


async def entered_here(request: Request) -> tuple[device_codes.PendingRequest, str] | None:
    """The pending request whose code was entered in this browser, and that code."""
    request_id, _, code = request.cookies.get(ENTERED_COOKIE, "").partition(".")
    normalized = device_codes.normalize_user_code(code[:20])
    if not request_id or normalized is None:
        return None
    ctx = get_context(request)
    found = await run_in_threadpool(device_codes.find_by_user_code, ctx.engine, normalized)
    if found is None or not hmac.compare_digest(found.id, request_id):
        return None
    return found, normalized


async def enter_code(request: Request) -> Response:
    ctx = get_context(request)
    if is_cross_site(request, expected_origin=ctx.settings.origin, method=request.method):
        return problem(403, "Cross-site request refused.")
    ip = abuse.client_ip(request)
    scale = ctx.settings.abuse_limit_scale
    typed = ""
    try:
        # Counted before the code is even read: past the limit, no code is tried at all.
        await abuse.check(ctx.proxy.limits, abuse.USER_CODE_PER_IP, ip, scale)
        signed_in = await run_in_threadpool(ctx.sessions.current, request)
        if signed_in is None:
            await abuse.check(ctx.proxy.limits, abuse.USER_CODE_ANONYMOUS, "all", scale)
        else:
            await abuse.check(
                ctx.proxy.limits, abuse.USER_CODE_PER_ACCOUNT, signed_in.user.id, scale
            )
        form = await read_form(request, FORM_LIMIT)
        typed = form.get("user_code")[:20]
        normalized = device_codes.normalize_user_code(typed)
        found = None
        if normalized is not None:
            subject = device_codes.user_code_hash(normalized)
            await abuse.check(ctx.proxy.limits, abuse.USER_CODE_PER_CODE, subject, scale)
            found = await run_in_threadpool(device_codes.find_by_user_code, ctx.engine, normalized)
    except abuse.TooManyAttempts as exc:
        logger.warning("device flow: code entry limited for %s", ip)
        response = _page(request, typed, exc.message, 429)
        response.headers["retry-after"] = str(exc.retry_after)
        return response
    except HTTPProblem as exc:
        return _page(request, "", exc.message, exc.status)
    if found is None or normalized is None:
        # The typed text is not logged: a near miss of a real code is nearly a secret.
        logger.warning("device flow: a wrong, expired or used user code was entered from %s", ip)
        return _page(request, typed, WRONG_CODE, 400)
    response = RedirectResponse("/device/request", status_code=303)
    _set_cookie(request, response, ENTERED_COOKIE, f"{found.id}.{normalized}")
    return response


async def device_request(request: Request) -> Response:
    ctx = get_context(request)
    entered = await entered_here(request)
    client = None
    if entered is not None:
        client = await run_in_threadpool(find_client, ctx.engine, entered[0].client_id)
    if entered is None or client is None:
        # Not entered in this browser (e.g. a link someone sent), expired or answered.
        return RedirectResponse("/device", status_code=303)
    pending, code = entered
    return await consent_steps(
        request,
        client,
        here="/device/request",
        query=pending.id,
        scopes=pending.scope.split(),
        hints=pending.hints,
        device_code=_dashed(code),
    )


def _confirm_subject(user_id: str, request_id: str) -> str:
    return f"{user_id} {request_id} allow"


@ceremony_endpoint
async def device_confirm_options(request: Request, ctx: Context, body: dict[str, Any]) -> Response:
    """Passkey options for Allow on the request entered in this browser, bound to it."""
    signed_in = await run_in_threadpool(ctx.sessions.current, request)
    if signed_in is None:
        raise HTTPProblem(401, "Your session ended. Sign in again.")
    entered = await entered_here(request)
    if entered is None:
        raise HTTPProblem(409, GONE)
    subject = _confirm_subject(signed_in.user.id, entered[0].id)
    return await confirmation_options(ctx, signed_in, CONFIRM_PURPOSE, subject)


async def device_decision(request: Request) -> Response:
    ctx = get_context(request)
    signed_in = await json_guard(request)
    if isinstance(signed_in, Response):
        return signed_in
    try:
        body = await read_json_object(request)
        request_id = body.get("query")
        decision = body.get("decision")
        if decision not in DONE:
            raise HTTPProblem(400, "Choose Allow or Deny.")
        # Allow and Deny alike only for the request whose code was entered in this browser.
        entered = await entered_here(request)
        if entered is None or entered[0].id != request_id:
            raise HTTPProblem(409, GONE)
        pending = entered[0]
        if decision == "allow":
            consent = await owner_consent(
                ctx,
                signed_in,
                body,
                pending.scope.split(),
                purpose=CONFIRM_PURPOSE,
                subject=_confirm_subject(signed_in.user.id, pending.id),
            )
            decided = await run_in_threadpool(
                device_codes.decide,
                ctx.engine,
                pending.id,
                signed_in.user.id,
                consent.choices,
                consent.provider_key,
            )
        else:
            decided = await run_in_threadpool(
                device_codes.decide, ctx.engine, pending.id, signed_in.user.id, None
            )
        if not decided:
            raise HTTPProblem(409, GONE)
    except ChoiceError as exc:
        return problem(400, str(exc))
    except CONFIRMATION_ERRORS as exc:
        return confirmation_problem(exc)
    response = JSONResponse(
        {"mode": "device", "message": DONE[decision]}, headers={"cache-control": "no-store"}
    )
    response.delete_cookie(ENTERED_COOKIE, path="/device")
    return response


routes = [
    Route("/device", device_page),
    Route("/device", enter_code, methods=["POST"]),
    Route("/device/request", device_request),
    Route("/device/confirm/options", device_confirm_options, methods=["POST"]),
    Route("/device/decision", device_decision, methods=["POST"]),
]
