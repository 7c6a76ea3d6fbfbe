"""The example third-party app (examples/demo-app), served on its own origin by
``keybroker demo`` and ``keybroker serve --with-demo``."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from keybroker.resources import resource_dir


def demo_dir() -> Path:
    return resource_dir("examples/demo-app")


def create_demo_app(broker_url: str) -> Starlette:
    root = demo_dir()
    broker = broker_url.rstrip("/")

    async def index(request: Request) -> Response:
        html = (root / "index.html").read_text().replace("{{BROKER}}", broker)
        csp = (
            f"default-src 'self'; script-src 'self' {broker}; connect-src {broker}; "
            "style-src 'self'; frame-ancestors 'none'"
        )
        return HTMLResponse(html, headers={"content-security-policy": csp})

    async def app_js(request: Request) -> Response:
        bundle = root / "dist" / "app.js"
        if not bundle.is_file():
            return PlainTextResponse("The demo is not built: run 'make sdk'.", status_code=503)
        return FileResponse(bundle, media_type="text/javascript")

    async def style(request: Request) -> Response:
        return FileResponse(root / "style.css", media_type="text/css")

    return Starlette(
        routes=[Route("/", index), Route("/app.js", app_js), Route("/style.css", style)]
    )
