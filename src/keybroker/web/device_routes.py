"""The owner's side of the device flow (RFC 8628 §3.3): enter the code the app shows, sign
in with a passkey, and answer the same consent screen as any app, which says plainly that a
device is asking. The app learns the answer by polling the token endpoint.

Code entry is limited per address and per code, and wrong codes are logged (§5.1), so user
codes cannot be found by guessing. A correct code leads to ``/device/request/<id>``, whose
random id (not the code) identifies the request from then on. ``?user_code=`` (the
verification_uri_complete) only fills the field: the owner still compares and continues
(§5.4, against remote phishing).
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from keybroker.auth.csrf import is_cross_site
from keybroker.context import get_context
from keybroker.grants import ChoiceError
from keybroker.oauth import device_codes
from keybroker.oauth.clients import find_client
from keybroker.web import abuse
from keybroker.web.confirm import CONFIRMATION_ERRORS, confirmation_problem
from keybroker.web.consent import consent_steps, owner_consent
from keybroker.web.forms import json_guard, read_form
from keybroker.web.http import HTTPProblem, problem, read_json_object
from keybroker.web.pages import render

logger = logging.getLogger("keybroker.device")

FORM_LIMIT = 4 * 1024
WRONG_CODE = "That code is not valid, or it has expired or been used. Check it and try again."
GONE = "This request has expired or has already been answered. Start again on your device."
DONE = {
    "allow": "Allowed. Return to your device: the app gets its access within a few seconds.",
    "deny": "Denied. The app on your device has been told.",
}


def _page(
    request: Request, user_code: str = "", error: str | None = None, status: int = 200
) -> Response:
    return render(request, "device.html", status, user_code=user_code, error=error)


async def device_page(request: Request) -> Response:
    given = device_codes.normalize_user_code(request.query_params.get("user_code", ""))
    return _page(request, f"{given[:4]}-{given[4:]}" if given else "")


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
    if found is None:
        # The typed text is not logged: a near miss of a real code is nearly a secret.
        logger.warning("device flow: a wrong, expired or used user code was entered from %s", ip)
        return _page(request, typed, WRONG_CODE, 400)
    return RedirectResponse(f"/device/request/{found.id}", status_code=303)


async def device_request(request: Request) -> Response:
    ctx = get_context(request)
    request_id = request.path_params["request_id"]
    pending = await run_in_threadpool(device_codes.get_pending, ctx.engine, request_id)
    client = None
    if pending is not None:
        client = await run_in_threadpool(find_client, ctx.engine, pending.client_id)
    if pending is None or client is None:
        return _page(request, "", GONE, 404)
    return await consent_steps(
        request,
        client,
        here=f"/device/request/{pending.id}",
        query=pending.id,
        scopes=pending.scope.split(),
        hints=pending.hints,
        device=True,
    )


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
        pending = None
        if isinstance(request_id, str):
            pending = await run_in_threadpool(device_codes.get_pending, ctx.engine, request_id)
        if pending is None:
            raise HTTPProblem(409, GONE)
        if decision == "allow":
            consent = await owner_consent(ctx, signed_in, body, pending.scope.split())
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
    return JSONResponse(
        {"mode": "device", "message": DONE[decision]}, headers={"cache-control": "no-store"}
    )


routes = [
    Route("/device", device_page),
    Route("/device", enter_code, methods=["POST"]),
    Route("/device/request/{request_id}", device_request),
    Route("/device/decision", device_decision, methods=["POST"]),
]
