"""Token, revocation, device authorization and metadata endpoints (RFC 6749 §3.2, RFC 7009,
RFC 8628 §3.1, RFC 8414).

CORS: a browser app may call the token and revocation endpoints from its own origin, and
only for a client_id equal to that origin; every other origin gets no CORS headers, so the
browser withholds the answer. /authorize never sends CORS headers.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keybroker.context import get_context
from keybroker.oauth.clients import web_origin
from keybroker.oauth.server import HTTPInput, OAuthResult, metadata
from keybroker.web import abuse
from keybroker.web.forms import read_form
from keybroker.web.http import HTTPProblem

TOKEN_FORM_LIMIT = 16 * 1024
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=NO_STORE
    )


def _cors(origin: str | None) -> dict[str, str]:
    if origin is None or web_origin(origin) is None:
        return {}
    return {"access-control-allow-origin": origin, "vary": "Origin"}


async def _run(request: Request, endpoint: str) -> Response:
    ctx = get_context(request)
    if request.method == "OPTIONS":  # CORS preflight (Fetch §3.2.2)
        headers = _cors(request.headers.get("origin"))
        if headers:
            headers.update(
                {
                    "access-control-allow-methods": "POST",
                    "access-control-allow-headers": "content-type",
                    "access-control-max-age": "600",
                }
            )
        return Response(status_code=204, headers=headers)
    try:
        await abuse.check(
            ctx.proxy.limits,
            abuse.TOKEN_PER_IP,
            abuse.client_ip(request),
            ctx.settings.abuse_limit_scale,
        )
        form = await read_form(request, TOKEN_FORM_LIMIT)
    except abuse.TooManyAttempts as exc:
        response = _oauth_error(429, "slow_down", exc.message)
        response.headers["retry-after"] = str(exc.retry_after)
        return response
    except HTTPProblem as exc:
        return _oauth_error(exc.status, "invalid_request", exc.message)
    origin = request.headers.get("origin")
    client_id = form.get("client_id")
    cors = _cors(origin) if origin == client_id else {}
    if origin is not None and web_origin(client_id) is not None and origin != client_id:
        # A page may only redeem or revoke tokens of its own origin.
        return _oauth_error(401, "invalid_client", "client_id does not match the Origin.")
    given = HTTPInput(
        method="POST",
        url=str(request.url),
        headers=dict(request.headers),
        query=[],
        form=list(form.fields.items()),
    )
    if endpoint == "token":
        result = await run_in_threadpool(ctx.oauth.create_token_response, given)
    else:
        result = await run_in_threadpool(ctx.oauth.create_endpoint_response, endpoint, given)
    answer: OAuthResult = result
    return answer.to_response({**NO_STORE, **cors})


async def token(request: Request) -> Response:
    return await _run(request, "token")


async def revoke(request: Request) -> Response:
    return await _run(request, "revocation")


async def device_authorization(request: Request) -> Response:
    return await _run(request, "device_authorization")


async def server_metadata(request: Request) -> Response:
    ctx = get_context(request)
    return JSONResponse(
        metadata(ctx.settings.public_url), headers={"access-control-allow-origin": "*"}
    )


routes = [
    Route("/oauth/token", token, methods=["POST", "OPTIONS"]),
    Route("/oauth/revoke", revoke, methods=["POST", "OPTIONS"]),
    Route("/oauth/device_authorization", device_authorization, methods=["POST", "OPTIONS"]),
    Route("/.well-known/oauth-authorization-server", server_metadata),
]
