"""The key page: paste, replace and delete the owner's OpenAI key.

Saving a key, the first or a replacement, needs a fresh user-verified passkey assertion
(web/confirm.py), not only the session: a stolen cookie must not swap in the thief's key,
which would receive the traffic of every app allowed later.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from keybroker import provider_keys
from keybroker.context import get_context
from keybroker.grants import grants_of
from keybroker.web import abuse
from keybroker.web.confirm import (
    CONFIRMATION_ERRORS,
    confirmation_failure,
    verify_fresh_assertion,
)
from keybroker.web.forms import Form, guard, read_form
from keybroker.web.http import HTTPProblem, safe_next
from keybroker.web.pages import render


async def key_page(
    request: Request, *, error: str | None = None, status: int = 200, next_url: str | None = None
) -> Response:
    signed_in = await guard(request, "/key")
    if isinstance(signed_in, Response):
        return signed_in
    ctx = get_context(request)
    stored = await run_in_threadpool(provider_keys.stored_key, ctx.engine, signed_in.user.id)
    return render(
        request,
        "key.html",
        status,
        signed_in=signed_in,
        stored=stored,
        error=error,
        next_url=safe_next(next_url or request.query_params.get("next"), "/key"),
        saved=request.query_params.get("saved"),
    )


async def save_key(request: Request) -> Response:
    signed_in = await guard(request, "/key")
    if isinstance(signed_in, Response):
        return signed_in
    ctx = get_context(request)
    try:
        form = await read_form(request)
    except HTTPProblem as exc:
        message = (
            "That is far longer than an OpenAI API key. Copy just the key, which starts with sk-."
            if exc.status == 413
            else exc.message
        )
        return await key_page(request, error=message, status=exc.status)
    try:
        await verify_fresh_assertion(ctx, signed_in.user.id, _confirmation(form))
    except CONFIRMATION_ERRORS as exc:
        status, message, _ = confirmation_failure(exc)
        return await key_page(request, error=message, status=status, next_url=form.get("next"))
    try:
        key = provider_keys.check_shape(form.get("key"))
        # Checked before the upstream is asked: keybroker must not become a key tester.
        await abuse.check(
            ctx.proxy.limits,
            abuse.KEY_CHECK_PER_ACCOUNT,
            signed_in.user.id,
            ctx.settings.abuse_limit_scale,
        )
        await abuse.check(
            ctx.proxy.limits,
            abuse.KEY_CHECK_PER_IP,
            abuse.client_ip(request),
            ctx.settings.abuse_limit_scale,
        )
        await run_in_threadpool(
            provider_keys.validate_upstream,
            key,
            upstream_url=ctx.settings.upstream_url,
            timeout=ctx.settings.validation_timeout,
        )
    except provider_keys.KeyRejectedError as exc:
        return await key_page(
            request, error=exc.message, status=exc.status, next_url=form.get("next")
        )
    except abuse.TooManyAttempts as exc:
        return await key_page(request, error=exc.message, status=429, next_url=form.get("next"))
    try:
        await run_in_threadpool(
            lambda: provider_keys.save_key(ctx.engine, ctx.ring, user_id=signed_in.user.id, key=key)
        )
    except provider_keys.KeyRejectedError as exc:  # strict custody: cannot be replaced here
        return await key_page(
            request, error=exc.message, status=exc.status, next_url=form.get("next")
        )
    next_url = safe_next(form.get("next"), "/key")
    separator = "&" if "?" in next_url else "?"
    return RedirectResponse(
        f"{next_url}{separator}saved=1" if next_url == "/key" else next_url, status_code=303
    )


def _confirmation(form: Form) -> dict[str, Any]:
    """The passkey assertion that key.js put in the form's hidden fields."""
    try:
        credential = json.loads(form.get("credential") or "null")
    except ValueError:
        credential = None
    return {"ceremony": form.get("ceremony") or None, "credential": credential}


async def confirm_delete(request: Request) -> Response:
    """The confirmation page: what deleting the key ends. The deletion itself needs a fresh
    passkey assertion (POST /settings/key/delete)."""
    signed_in = await guard(request, "/key")
    if isinstance(signed_in, Response):
        return signed_in
    ctx = get_context(request)
    stored = await run_in_threadpool(provider_keys.stored_key, ctx.engine, signed_in.user.id)
    live = [g for g in await run_in_threadpool(grants_of, ctx.engine, signed_in.user.id) if g.live]
    return render(request, "key_delete.html", signed_in=signed_in, stored=stored, grants=live)


async def key_endpoint(request: Request) -> Response:
    if request.method == "POST":
        return await save_key(request)
    return await key_page(request)


routes = [
    Route("/key", key_endpoint, methods=["GET", "POST"]),
    Route("/key/delete", confirm_delete, methods=["GET", "POST"]),
]
