"""The authorization endpoint's pages: sign in, paste a key, consent; then the decision.

Every step re-validates the whole authorization request through authlib, so nothing the
browser sends back between steps is trusted. Responses reach a web-origin app by
postMessage to its exact origin (never "*"), and a registered app by redirect to its
registered URI; an invalid client or redirect URI only ever gets an error page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749.errors import InvalidClientError, OAuth2Error
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keybroker import grants as grant_store
from keybroker import provider_keys
from keybroker.auth.sessions import SignedIn
from keybroker.context import Context, get_context
from keybroker.grants import ChoiceError
from keybroker.oauth.approval import Consent
from keybroker.oauth.clients import SCOPES, Client, canonical_suggestion, origin_problem
from keybroker.oauth.server import HTTPInput, OAuthResult, with_params
from keybroker.proxy.scopes import BY_NAME
from keybroker.web.confirm import (
    CONFIRMATION_ERRORS,
    confirmation_problem,
    verify_fresh_assertion,
)
from keybroker.web.forms import json_guard
from keybroker.web.http import HTTPProblem, problem, read_json_object
from keybroker.web.pages import render

MAX_QUERY = 8 * 1024


def _input(request: Request, query: str) -> HTTPInput:
    return HTTPInput(
        method="GET",
        url=f"{get_context(request).settings.public_url}/authorize",
        headers=dict(request.headers),
        query=parse_qsl(query, keep_blank_values=True),
    )


def _validate(ctx: Context, given: HTTPInput) -> Any:
    client_id = dict(given.query).get("client_id", "")
    if "://" in client_id and (why := origin_problem(client_id)) is not None:
        # A look-alike or second spelling of a web origin: say why, never redirect.
        meant = canonical_suggestion(client_id)
        hint = f" The canonical form would be {meant}." if meant else ""
        raise InvalidClientError(
            description=f"The app's client_id is not a canonical web origin. {why}{hint}"
        )
    try:
        grant = ctx.oauth.get_consent_grant(given)
    except ValueError:
        # authlib refuses to echo control characters in an error description (RFC 6749
        # §4.1.2.1 limits them to %x20-21 / %x23-5B / %x5D-7E): so do we, plainly.
        raise _invalid(
            "The authorization request contains characters that are not allowed."
        ) from None
    client: Client = grant.request.client
    mode = grant.request.payload.data.get("response_mode")
    if client.origin is not None and mode != "web_message":
        raise _invalid("A web app must use response_mode=web_message.")
    if client.origin is None and mode not in (None, "query"):
        raise _invalid("A registered app gets its response by redirect (response_mode=query).")
    return grant


def _invalid(description: str) -> OAuth2Error:
    from authlib.oauth2.rfc6749.errors import InvalidRequestError

    return InvalidRequestError(description)


def _delivery(ctx: Context, client: Client | None, result: OAuthResult) -> dict[str, Any]:
    """How the popup or redirect hands the result to the app."""
    params = result.params()
    if client is not None and client.origin is not None:
        message = {"type": "authorization_response", **params}
        message.setdefault("iss", ctx.settings.public_url)
        return {"mode": "web_message", "origin": client.origin, "message": message}
    return {"mode": "redirect", "location": result.location}


def _error_result(ctx: Context, error: OAuth2Error, state: str | None) -> OAuthResult | None:
    if not error.redirect_uri:
        return None
    error.state = state
    status, body, headers = error()
    result = OAuthResult(status, body, list(headers))
    result.location = with_params(result.location or "", {"iss": ctx.settings.public_url})
    return result


async def authorize(request: Request) -> Response:
    ctx = get_context(request)
    query = request.url.query
    if len(query) > MAX_QUERY:
        return _error_page(request, "invalid_request", "The authorization request is too long.")
    given = _input(request, query)
    try:
        grant = await run_in_threadpool(_validate, ctx, given)
    except OAuth2Error as error:
        state = dict(given.query).get("state")
        asking = await run_in_threadpool(
            ctx.oauth.query_client, dict(given.query).get("client_id", "")
        )
        result = _error_result(ctx, error, state)
        if result is None:
            return _error_page(request, error.error, error.get_error_description())
        delivery = _delivery(ctx, asking, result)
        if delivery["mode"] == "redirect":
            return Response(status_code=302, headers={"location": delivery["location"]})
        return _error_page(request, error.error, error.get_error_description(), delivery)
    return await consent_steps(
        request,
        grant.request.client,
        here=f"/authorize?{query}",
        query=query,
        scopes=grant.request.scope.split(),
        hints=grant.request.payload.data,
    )


async def consent_steps(
    request: Request,
    client: Client,
    *,
    here: str,
    query: str,
    scopes: list[str],
    hints: Mapping[str, str],
    device_code: str | None = None,
) -> Response:
    """Sign in, add a key, or the consent screen, whichever comes next for this owner.
    ``query`` identifies the request to the decision endpoint; ``device_code`` says a device
    (RFC 8628) is asking, and which user code it shows."""
    ctx = get_context(request)
    signed_in = await run_in_threadpool(ctx.sessions.current, request)
    common: dict[str, Any] = {
        "client": client,
        "signed_in": signed_in,
        "next_url": here,
        "device": device_code is not None,
        "device_code": device_code,
    }
    if signed_in is None:
        return render(request, "authorize.html", step="signin", **common)
    stored = await run_in_threadpool(provider_keys.stored_key, ctx.engine, signed_in.user.id)
    if stored is None:
        return render(request, "authorize.html", step="key", error=None, **common)
    return render(
        request,
        "authorize.html",
        step="consent",
        **common,
        stored=stored,
        query=query,
        # Batches and fine-tuning are off until the owner ticks them (proxy/scopes.py).
        scopes=[(s, SCOPES[s], BY_NAME[s].on_by_default) for s in scopes],
        models=hints.get("models", ""),
        budget=_hint(hints.get("budget"), 5, 0, 10_000),
        rpm=int(_hint(hints.get("rpm"), 60, 1, 10_000)),
        days=int(_hint(hints.get("expires_in_days"), 30, 1, 365)),
    )


def _hint(value: str | None, default: float, low: float, high: float) -> float:
    try:
        number = float(value) if value else default
    except ValueError:
        return default
    return min(max(number, low), high) if number == number else default


def _error_page(
    request: Request, error: str, description: str | None, delivery: dict[str, Any] | None = None
) -> Response:
    return render(
        request,
        "authorize_error.html",
        400,
        error=error,
        description=description or "",
        delivery=delivery,
    )


async def decision(request: Request) -> Response:
    ctx = get_context(request)
    signed_in = await json_guard(request)
    if isinstance(signed_in, Response):
        return signed_in
    try:
        body = await read_json_object(request)
        query = body.get("query")
        if not isinstance(query, str) or len(query) > MAX_QUERY:
            raise HTTPProblem(400, "The authorization request is missing.")
        given = _input(request, query)
        try:
            grant = await run_in_threadpool(_validate, ctx, given)
        except OAuth2Error as error:
            raise HTTPProblem(400, error.get_error_description() or error.error) from None
        client: Client = grant.request.client
        consent: Consent | None = None
        if body.get("decision") == "allow":
            consent = await owner_consent(ctx, signed_in, body, grant.request.scope.split())
        elif body.get("decision") != "deny":
            raise HTTPProblem(400, "Choose Allow or Deny.")
    except ChoiceError as exc:
        return problem(400, str(exc))
    except CONFIRMATION_ERRORS as exc:
        return confirmation_problem(exc)
    if consent is not None:
        # Narrowed scopes become the granted scope (RFC 6749 §3.3).
        grant.request.scope = " ".join(consent.choices.scopes)
    result: OAuthResult = await run_in_threadpool(
        lambda: ctx.oauth.create_authorization_response(given, grant_user=consent, grant=grant)
    )
    return JSONResponse(_delivery(ctx, client, result), headers={"cache-control": "no-store"})


async def owner_consent(
    ctx: Context,
    signed_in: SignedIn,
    body: dict[str, Any],
    asked: list[str],
    **confirmation: str,
) -> Consent:
    """The owner's Allow: their choices (within the ``asked`` scopes), confirmed by a fresh
    passkey assertion (``confirmation``: its challenge's purpose and subject, see
    verify_fresh_assertion), and their key opened for the grant. Raises CONFIRMATION_ERRORS
    or ChoiceError."""
    fields = body.get("choices")
    if not isinstance(fields, dict):
        raise HTTPProblem(400, "The consent choices are missing.")
    picked = [s for s in fields.get("scopes", []) if s in asked]
    choices = grant_store.choices_from_form(
        {k: str(v) for k, v in fields.items() if k != "scopes"}, picked
    )
    proof = await verify_fresh_assertion(ctx, signed_in.user.id, body, **confirmation)
    key = await run_in_threadpool(
        provider_keys.open_key, ctx.engine, ctx.ring, signed_in.user.id, proof
    )
    if proof is not None:
        # A PRF passkey used here gets its key slot if it has none yet.
        await run_in_threadpool(
            provider_keys.add_slot, ctx.engine, ctx.ring, signed_in.user.id, proof
        )
    if key is None:
        raise HTTPProblem(409, "Your OpenAI key is gone. Add it again first.")
    return Consent(signed_in.user.id, choices, key)


routes = [
    Route("/authorize", authorize),
    Route("/authorize/decision", decision, methods=["POST"]),
]
