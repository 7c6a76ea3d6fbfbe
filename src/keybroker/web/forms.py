"""Bounded form parsing and the session/CSRF guard for HTML form posts."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from keybroker.auth.csrf import is_cross_site
from keybroker.auth.sessions import SignedIn
from keybroker.context import get_context
from keybroker.web.http import HTTPProblem, problem, read_body

FORM_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Form:
    fields: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)


async def read_form(request: Request, limit: int = FORM_LIMIT) -> Form:
    body = await read_body(request, limit)
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise HTTPProblem(400, "The form could not be read.") from None
    return Form({k: v[0] for k, v in parsed.items()})


async def guard(request: Request, login_next: str) -> SignedIn | Response:
    """The signed-in owner, or the response that refuses the request."""
    ctx = get_context(request)
    if is_cross_site(request, expected_origin=ctx.settings.origin, method=request.method):
        return PlainTextResponse("Cross-site request refused.", status_code=403)
    signed_in = await run_in_threadpool(ctx.sessions.current, request)
    if signed_in is None:
        return RedirectResponse(f"/signin?next={login_next}", status_code=303)
    return signed_in


async def json_guard(request: Request) -> SignedIn | Response:
    """Like ``guard`` for JSON endpoints: the refusal is a JSON problem, not a redirect."""
    ctx = get_context(request)
    if is_cross_site(request, expected_origin=ctx.settings.origin, method=request.method):
        return problem(403, "Cross-site request refused.")
    signed_in = await run_in_threadpool(ctx.sessions.current, request)
    if signed_in is None:
        return problem(401, "Your session ended. Sign in again.")
    return signed_in
