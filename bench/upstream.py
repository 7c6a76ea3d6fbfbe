"""A canned OpenAI upstream for the benchmark: fast enough never to be the limit."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hello from the canned upstream."},
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    }
).encode()


def chunk(i: int) -> bytes:
    data = {
        # When the chunk left, on the clock every process here shares (CLOCK_MONOTONIC), so
        # the client can tell how long each chunk took to reach it.
        "bench_sent": time.perf_counter(),
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}],
    }
    return f"data: {json.dumps(data)}\n\n".encode()


async def completions(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if b'"stream":true' not in body.replace(b" ", b""):
        return web.Response(body=COMPLETION, content_type="application/json")
    params = json.loads(body)
    chunks = int(params.get("n_chunks", 64))
    pace = float(params.get("pace_ms", 20)) / 1000
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(chunks):
        # Paced against the clock, not by sleeping a fixed time, so drift does not add up.
        await asyncio.sleep(max(0.0, start + i * pace - loop.time()))
        await response.write(chunk(i))
    usage = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": chunks, "total_tokens": 9 + chunks},
    }
    if (params.get("stream_options") or {}).get("include_usage"):
        await response.write(f"data: {json.dumps(usage)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, backlog=4096)


if __name__ == "__main__":
    main()
