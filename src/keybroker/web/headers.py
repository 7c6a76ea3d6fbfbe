"""Security headers on every response, as pure ASGI middleware (no BaseHTTPMiddleware)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
DEFAULT_COOP = "same-origin"
# Pages that can load inside the consent popup must keep window.opener to post the result
# back: any COOP but unsafe-none would put them in a new browsing context group with no
# opener (HTML Standard, "cross-origin opener policies").
POPUP_PATHS = ("/authorize", "/key")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("referrer-policy", "no-referrer")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("content-security-policy", CSP)
                    headers.setdefault("x-frame-options", "DENY")
                    popup = scope["path"].startswith(POPUP_PATHS)
                    headers.setdefault(
                        "cross-origin-opener-policy", "unsafe-none" if popup else DEFAULT_COOP
                    )
                    headers.setdefault("cache-control", "no-store")
                if self.hsts:
                    headers.setdefault(
                        "strict-transport-security", "max-age=63072000; includeSubDomains"
                    )
            await send(message)

        await self.app(scope, receive, send_with_headers)
