"""A mock OpenAI API on a loopback port: what the proxy and key checks talk to in tests.

Keys decide behaviour: one containing ``bad`` is refused (401), ``quota`` gets 429, ``slow``
answers after ``SLOW_SECONDS``. Directives in a chat's text steer the answer (``tokens:N``,
``sleep:MS``, ``chunks:N``, ``bulk:BYTES``...); ``realistic:1`` reports prompt tokens as a
tokenizer would for English (``english_tokens``: 100 tokens per 75 words). Every request is
recorded (method, path, headers, body) so tests can check exactly what reached the upstream.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.net import free_port
from tests.upstream_objects import Objects, build_routes

SLOW_SECONDS = 3.0
# The catch-all answers (and records) any method, so that a method the proxy must never
# forward would show up in ``seen`` if it did.
ANY_METHOD = ["GET", "POST", "DELETE", "PUT", "PATCH", "TRACE", "PROPFIND", "HEAD", "OPTIONS"]


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
    cancelled: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    objects: Objects = field(default_factory=Objects)
    background: dict[str, dict[str, Any]] = field(default_factory=dict)  # responses queued
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
        echo = request.headers.get("x-stainless-test-echo")
        if echo is not None:  # an upstream that tells the key it was given, as some do
            key = auth.removeprefix("Bearer ")
            shown = {
                "whole": key,
                "masked": f"{key[:8]}{'*' * 20}{key[-4:]}",
                "ellipsis": f"{key[:8]}\\u2026{key[-4:]}",  # JSON-escaped, as OpenAI writes it
                "utf8": f"{key[:8]}…{key[-4:]}",
            }[echo]
            raw = f'{{"error": {{"message": "Incorrect API key provided: {shown}.", "type": '
            raw += '"invalid_request_error", "param": null, "code": "invalid_api_key"}}'
            return Response(raw.encode(), status_code=401, media_type="application/json")
        return None

    async def models(request: Request) -> Response:
        refused = await record(request)
        if refused is not None:
            return refused
        data: list[dict[str, Any]] = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"}
            for m in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
        ]
        answer = JSONResponse({"object": "list", "data": data})
        if request.headers.get("x-stainless-test-encoding") == "gzip":  # as OpenAI answers
            packed = gzip.compress(answer.body)
            answer.body = packed
            answer.headers["content-encoding"] = "gzip"
            answer.headers["content-length"] = str(len(packed))
        return answer

    async def chat(request: Request) -> Response:
        refused = await record(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(state.seen[-1].body)
        except ValueError:
            return openai_error(
                400,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                None,
            )
        text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        directives = dict(re.findall(r"(\w+):(\d+)", text))
        if "error" in directives:
            status = int(directives["error"])
            return (
                openai_error(status, f"upstream says {status}", "server_error", None)
                if status != 429
                else JSONResponse(
                    {
                        "error": {
                            "message": "Rate limit reached",
                            "type": "requests",
                            "param": None,
                            "code": "rate_limit_exceeded",
                        }
                    },
                    status_code=429,
                    headers={"x-ratelimit-remaining-requests": "0", "retry-after": "1"},
                )
            )
        if "sleep" in directives:
            await asyncio.sleep(int(directives["sleep"]) / 1000)
        model = body.get("model", "gpt-4o-mini")
        prompt_tokens = 10 * len(body.get("messages", []))
        chat_id = "chatcmpl-1"
        if body.get("store") is True:  # a stored completion, listed and read back later
            chat_id = state.objects.add(
                "chat.completion", model=model, metadata=body.get("metadata") or {}
            )["id"]
            state.objects.children[chat_id] = [
                {"id": f"{chat_id}-{i}", "role": m.get("role"), "content": m.get("content")}
                for i, m in enumerate(body.get("messages", []))
            ]
        if "realistic" in directives:
            prompt_tokens = english_tokens(text)
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": chat_id,
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {
                                "role": "assistant",
                                "content": "Hello there!" + "." * int(directives.get("bulk", 0)),
                            },
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": int(directives.get("tokens", 7)),
                        "total_tokens": prompt_tokens + int(directives.get("tokens", 7)),
                    },
                    "system_fingerprint": "fp_x",
                },
                headers={
                    "x-request-id": "req_upstream_1",
                    "openai-organization": "org-owner",
                    "x-ratelimit-remaining-requests": "99",
                },
            )
        chunks = int(directives.get("chunks", 5))
        pace = int(directives.get("pace", 0)) / 1000
        pad = int(directives.get("pad", 0))  # bytes of filler in each chunk's text
        broken = "broken" in text
        with_usage = (body.get("stream_options") or {}).get("include_usage") is True

        async def events() -> Any:
            try:
                for i in range(chunks):
                    if broken and i == 2:
                        raise RuntimeError("upstream broke the stream")
                    chunk = {
                        "id": chat_id if chat_id != "chatcmpl-1" else "chatcmpl-2",
                        "object": "chat.completion.chunk",
                        "created": 1,
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"content": f"w{i} " + "." * pad},
                                "finish_reason": None,
                            }
                        ],
                    }
                    if with_usage:
                        chunk["usage"] = None
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                    if pace:
                        await asyncio.sleep(pace)
                if with_usage:
                    last = {
                        "id": "chatcmpl-2",
                        "object": "chat.completion.chunk",
                        "created": 1,
                        "model": model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": chunks,
                            "total_tokens": prompt_tokens + chunks,
                        },
                    }
                    yield f"data: {json.dumps(last)}\n\n".encode()
                yield b"data: [DONE]\n\n"
                state.completed.append("chat")
            except asyncio.CancelledError:
                state.cancelled.append("chat")
                raise

        if request.headers.get("x-stainless-test-framing") == "length":
            # All events at once with their length: the proxy must not pass a length on for
            # events it changes.
            whole = b"".join([event async for event in events()])
            return Response(whole, media_type="text/event-stream")
        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"x-request-id": "req_stream_1"}
        )

    async def responses(request: Request) -> Response:
        refused = await record(request)
        if refused is not None:
            return refused
        body = json.loads(state.seen[-1].body)
        model = body.get("model", "gpt-4o-mini")
        usage = {"input_tokens": 21, "output_tokens": 4, "total_tokens": 25}
        response_id = "resp_1"
        if body.get("store") is not False:  # stored unless asked not to, as at OpenAI
            response_id = state.objects.new_id("response")
        final = {
            "id": response_id,
            "object": "response",
            "created_at": 1,
            "model": model,
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "a b c d", "annotations": []}],
                }
            ],
            "usage": usage,
            "previous_response_id": body.get("previous_response_id"),
        }
        if response_id != "resp_1":
            state.objects.by_id[response_id] = final
        if body.get("background"):
            state.background[final["id"]] = final
            return JSONResponse({**final, "status": "queued", "usage": None, "output": []})
        if not body.get("stream"):
            return JSONResponse(final)

        async def events() -> Any:
            seq = 0
            created = {**final, "status": "in_progress", "usage": None, "output": []}
            yield _sse(
                "response.created",
                {"type": "response.created", "response": created, "sequence_number": seq},
            )
            for word in "abcd":
                seq += 1
                yield _sse(
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "item_id": "msg_1",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": word + " ",
                        "sequence_number": seq,
                        "logprobs": [],
                    },
                )
            yield _sse(
                "response.completed",
                {"type": "response.completed", "response": final, "sequence_number": seq + 1},
            )

        return StreamingResponse(events(), media_type="text/event-stream")

    async def completions(request: Request) -> Response:
        """The legacy completions API: usage in its stream only when asked for."""
        refused = await record(request)
        if refused is not None:
            return refused
        body = json.loads(state.seen[-1].body)
        model = body.get("model", "gpt-3.5-turbo-instruct")
        usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "model": model,
                    "choices": [{"text": "a b c", "index": 0, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )
        with_usage = (body.get("stream_options") or {}).get("include_usage") is True

        async def events() -> Any:
            for word in "abc":
                chunk = {
                    "id": "cmpl-2",
                    "object": "text_completion",
                    "model": model,
                    "choices": [{"text": word, "index": 0, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            if with_usage:
                last = {
                    "id": "cmpl-2",
                    "object": "text_completion",
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(last)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        refused = await record(request)
        if refused is not None:
            return refused
        body = json.loads(state.seen[-1].body)
        return JSONResponse(
            {
                "object": "list",
                "model": body.get("model"),
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": {"prompt_tokens": 5, "total_tokens": 5},
            }
        )

    async def images(request: Request) -> Response:
        refused = await record(request)
        if refused is not None:
            return refused
        seen = state.seen[-1]
        if seen.headers.get("content-type", "").startswith("multipart/"):
            from keybroker.proxy import framing

            kind = framing.body_type(seen.headers["content-type"].encode())
            parts = framing.multipart_parts(seen.body, kind)
            found = [p.data.decode() for p in parts if p.name == "model"]
            model = found[0] if found else "dall-e-2"
        else:
            model = json.loads(seen.body).get("model", "dall-e-2")
        answer: dict[str, Any] = {"created": 1, "data": [{"b64_json": "aGVsbG8="}]}
        if model.startswith("gpt-image"):  # only these report usage (in tokens)
            answer["usage"] = {
                "input_tokens": 12,
                "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
                "output_tokens": 4160,
                "total_tokens": 4172,
            }
        return JSONResponse(answer)

    async def speech(request: Request) -> Response:
        refused = await record(request)
        if refused is not None:
            return refused
        return Response(SPEECH, media_type="audio/mpeg")

    async def transcriptions(request: Request) -> Response:
        refused = await record(request)
        if refused is not None:
            return refused
        form = await _form(state.seen[-1], request)
        if form["model"] == "whisper-1":  # billed by the second, and says so
            return JSONResponse(
                {
                    "text": f"heard {form['file_size']} bytes",
                    "usage": {"type": "duration", "seconds": 90},
                }
            )
        return JSONResponse(
            {
                "text": f"heard {form['file_size']} bytes",
                "usage": {
                    "type": "tokens",
                    "input_tokens": 14,
                    "output_tokens": 3,
                    "total_tokens": 17,
                },
            }
        )

    object_routes = build_routes(state.objects)

    async def objects(request: Request) -> Response:
        """Every other endpoint, and anything unknown: recorded, then answered or 404."""
        refused = await record(request)
        if refused is not None:
            return refused
        for method, pattern, handler in object_routes:
            found = pattern.match(request.url.path)
            if found and method == request.method:
                return await handler(request, state.objects, found.groupdict(), state.seen[-1].body)
        return openai_error(
            404, f"Invalid URL ({request.method} {request.url.path})", "invalid_request_error", None
        )

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/images/generations", images, methods=["POST"]),
            Route("/v1/audio/speech", speech, methods=["POST"]),
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/moderations", embeddings, methods=["POST"]),
            Route("/{path:path}", objects, methods=ANY_METHOD),
        ]
    )


SPEECH = b"ID3" + bytes(range(256)) * 64


def english_tokens(text: str) -> int:
    """Tokens a tokenizer counts in English text, by the usual measure: 100 per 75 words."""
    return -(-len(text.split()) * 4 // 3)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _form(seen: Seen, request: Request) -> dict[str, Any]:
    from keybroker.proxy import framing

    kind = framing.body_type(seen.headers.get("content-type", "").encode())
    parts = framing.multipart_parts(seen.body, kind)
    files = [p for p in parts if p.name == "file"]
    purpose = [p.data.decode() for p in parts if p.name == "purpose"]
    model = [p.data.decode() for p in parts if p.name == "model"]
    return {
        "file_size": len(files[0].data) if files else 0,
        "filename": (files[0].filename or "") if files else "",
        "purpose": purpose[0] if purpose else "",
        "model": model[0] if model else "",
    }


def serve_in_thread(
    app: Any,
    lifespan: str = "off",
    http: type[asyncio.Protocol] | str = "auto",
    keep_alive: int = 5,
) -> tuple[uvicorn.Server, str]:
    """An ASGI app under uvicorn on a free loopback port, in a daemon thread."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan=lifespan,
        http=http,
        timeout_keep_alive=keep_alive,
    )
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
    # Idle connections stay open longer than the proxy's pool keeps them (60 s, http1.py), as
    # at OpenAI's edge. With uvicorn's default of 5 s, a pooled connection the upstream was
    # closing at that instant took a POST and reset it: a 502 (not retried: a POST may have
    # been applied, RFC 9112 §9.3.1.1). That race is the pool's to handle (reported), not the
    # subject of the tests that use this upstream.
    server, url = serve_in_thread(build_app(state), keep_alive=75)
    state.url = f"{url}/v1"
    state.server, state.thread = server, server.thread  # type: ignore[attr-defined]
    return state


def stop_upstream(state: Upstream) -> None:
    if state.server is not None and state.thread is not None:
        state.server.should_exit = True
        state.thread.join(timeout=10)
