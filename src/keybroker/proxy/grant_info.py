"""``GET /api/grant``: what a token may do and how much of its budget is left."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keybroker.context import get_context
from keybroker.proxy import errors
from keybroker.proxy.limits import LimitsUnavailable


async def grant_info(request: Request) -> Response:
    proxy = get_context(request).proxy
    found = await proxy.authenticate(request.headers.get("authorization", "").encode("latin-1"))
    if found is None:
        status, message, kind, code = errors.INVALID_KEY
        return Response(
            errors.error_body(message, kind, code),
            status_code=status,
            media_type="application/json",
        )
    _, grant = found
    origin = request.headers.get("origin")
    headers = {"cache-control": "no-store"}
    if origin is not None and origin == grant.web_origin:
        headers.update({"access-control-allow-origin": origin, "vary": "Origin"})
    if not grant.live:
        status, message, kind, code = errors.ENDED
        return Response(
            errors.error_body(message, kind, code),
            status_code=status,
            media_type="application/json",
            headers=headers,
        )
    try:
        spent, reserved = await proxy.spend.state(grant)
    except LimitsUnavailable:
        return Response(
            errors.error_body(
                "Spend is unavailable right now; retry in a few seconds.",
                "server_error",
                "limits_unavailable",
            ),
            status_code=503,
            media_type="application/json",
            headers=headers,
        )
    return JSONResponse(
        {
            "grant_id": grant.id,
            "client": grant.client_name,
            "scopes": sorted(grant.scopes),
            "models": list(grant.models) or None,
            "rate_limit_rpm": grant.rpm,
            "monthly_budget_usd": grant.budget_microusd / 1_000_000,
            "spent_this_month_usd": spent / 1_000_000,
            # Held by this key's requests in flight: settled to their real cost when they end.
            "reserved_usd": reserved / 1_000_000,
            "remaining_budget_usd": max(0, grant.budget_microusd - spent - reserved) / 1_000_000,
            "expires_at": grant.expires_at.isoformat(),
            "created_at": grant.created_at.isoformat(),
        },
        headers=headers,
    )


routes = [Route("/api/grant", grant_info)]
