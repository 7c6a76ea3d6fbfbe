"""A mock OpenAI API on a loopback port: what the proxy and key checks talk to in tests.

Keys decide behaviour: one containing ``bad`` is refused (401), ``quota`` gets 429, ``slow``
answers after ``SLOW_SECONDS``. Every request is recorded (method, path, headers, body) so
tests can check exactly what reached the upstream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.net import free_port

SLOW_SECONDS = 3.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    def keys_seen(self) -> list[str]:
        return [s.headers.get("authorization", "") for s in self.seen]


def openai_error(status: int, message: str, kind: str, code: str | None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status_code=status,
    )


def build_app(state: Upstream) -> Starlette:
    async def record(request: Request) -> Response | None:
        body = await request.body()
        state.seen.append(Seen(request.method, request.url.path, dict(request.headers), body))
        auth = request.headers.get("authorization", "")
        if "bad" in auth:
            masked = auth.removeprefix("Bearer ")
            masked = masked[:6] + "*" * 10 + masked[-4:]
            return openai_error(
                401,
                f"Incorrect API key provided: {masked}. You can find your "
                "API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if "quota" in auth:
            return openai_error(
                429, "You exceeded your current quota.", "insufficient_quota", "insufficient_quota"
            )
        if "slow" in auth:
            await asyncio.sleep(SLOW_SECONDS)
        return None

    async def models(request: Request) -> Response:
        refused = await record(request)
        if refused is not None:
            return refused
        data: list[dict[str, Any]] = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"}
            for m in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
        ]
        return JSONResponse({"object": "list", "data": data})

    return Starlette(routes=[Route("/v1/models", models)])


def serve_in_thread(app: Any) -> tuple[uvicorn.Server, str]:
    """An ASGI app under uvicorn on a free loopback port, in a daemon thread."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    server.thread = thread  # type: ignore[attr-defined]
    return server, f"http://127.0.0.1:{port}"


def start_upstream() -> Upstream:
    state = Upstream()
    server, url = serve_in_thread(build_app(state))
    state.url = f"{url}/v1"
    state.server, state.thread = server, server.thread  # type: ignore[attr-defined]
    return state


def stop_upstream(state: Upstream) -> None:
    if state.server is not None and state.thread is not None:
        state.server.should_exit = True
        state.thread.join(timeout=10)
