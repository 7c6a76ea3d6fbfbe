"""Server-rendered HTML pages: landing, sign-in, settings."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from keybroker.context import get_context
from keybroker.web.http import safe_next


def render(
    request: Request,
    name: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    ctx = get_context(request)
    context.setdefault("settings", ctx.settings)
    return ctx.templates.TemplateResponse(
        request, name, context, status_code=status, headers=headers
    )


async def landing(request: Request) -> Response:
    ctx = get_context(request)
    signed_in = await run_in_threadpool(ctx.sessions.current, request)
    return render(request, "index.html", signed_in=signed_in, public_url=ctx.settings.public_url)


async def signin(request: Request) -> Response:
    ctx = get_context(request)
    next_url = safe_next(request.query_params.get("next"))
    if await run_in_threadpool(ctx.sessions.current, request):
        return RedirectResponse(next_url, status_code=303)
    return render(request, "signin.html", next_url=next_url)


async def healthz(request: Request) -> Response:
    return Response("ok\n", media_type="text/plain")


routes = [
    Route("/", landing),
    Route("/signin", signin),
    Route("/healthz", healthz),
]
