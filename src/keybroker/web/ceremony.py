"""The frame of every passkey ceremony step: same-origin check, abuse limit, bounded JSON
body and one error shape; and the single-use challenge a step consumes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from keybroker.auth import passkeys
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


def consume_ceremony(body: dict[str, Any], ctx: Context, purpose: str) -> tuple[str | None, bytes]:
    ceremony = body.get("ceremony")
    if not isinstance(ceremony, str) or len(ceremony) > 64:
        raise HTTPProblem(400, "Missing ceremony id. Start again.")
    issued = ctx.challenges.consume(ceremony, expected_purpose=purpose)
    return issued.subject, issued.challenge
