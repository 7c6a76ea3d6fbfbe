"""The floor: a bare aiohttp passthrough with no checks, no keys, no usage. What keybroker adds
is measured against this."""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def build(upstream: str) -> web.Application:
    session: dict[str, aiohttp.ClientSession] = {}

    async def start(app: web.Application) -> None:
        session["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(app: web.Application) -> None:
        await session["s"].close()

    async def passthrough(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session["s"].request(
            request.method,
            f"{upstream}{request.path_qs[3:]}",
            data=body,
            headers={
                "content-type": request.headers.get("content-type", ""),
                "authorization": "Bearer sk-floor",
            },
        ) as upstream_response:
            response = web.StreamResponse(
                status=upstream_response.status,
                headers={"content-type": upstream_response.headers.get("content-type", "")},
            )
            try:
                await response.prepare(request)
                async for data in upstream_response.content.iter_any():
                    await response.write(data)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                pass  # wrk closes its connections at the end of a run
            return response

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/v1/{tail:.*}", passthrough)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    web.run_app(
        build(args.upstream),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
