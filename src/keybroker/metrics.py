"""``GET /metrics``: a few Prometheus counters and gauges (text exposition format 0.0.4).

They hold no secret, but they tell anyone how busy the broker is and how its usage writer
fares. Serve them on a private port or network (docs/deploy.md), or set
``KEYBROKER_METRICS_TOKEN``: then a scrape needs ``Authorization: Bearer <token>`` (RFC 6750
§2.1), compared in constant time, and anything else is 401.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from keybroker.context import get_context


def _authorized(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    given = request.headers.get("authorization", "")
    scheme, _, credentials = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    )


async def metrics(request: Request) -> Response:
    ctx = get_context(request)
    if not _authorized(request, ctx.settings.metrics_token):
        return PlainTextResponse(
            "A bearer token is needed for /metrics.\n",
            status_code=401,
            headers={"www-authenticate": 'Bearer realm="metrics"'},
        )
    proxy = ctx.proxy
    lines = [
        "# HELP keybroker_proxy_responses_total Proxied requests answered, by HTTP status.",
        "# TYPE keybroker_proxy_responses_total counter",
        *(
            f'keybroker_proxy_responses_total{{status="{status}"}} {count}'
            for status, count in sorted(proxy.metrics.responses.items())
        ),
        "# HELP keybroker_proxy_latency_milliseconds_sum Total time spent answering proxied"
        " requests that reached the upstream.",
        "# TYPE keybroker_proxy_latency_milliseconds_sum counter",
        f"keybroker_proxy_latency_milliseconds_sum {proxy.metrics.latency_ms_sum}",
        "# HELP keybroker_usage_write_errors_total Usage batches that could not be written.",
        "# TYPE keybroker_usage_write_errors_total counter",
        f"keybroker_usage_write_errors_total {proxy.recorder.write_errors}",
        "# HELP keybroker_usage_queue_length Usage rows waiting to be written.",
        "# TYPE keybroker_usage_queue_length gauge",
        f"keybroker_usage_queue_length {proxy.recorder.pending}",
        "# HELP keybroker_grant_cache_entries Grants held in this process's cache.",
        "# TYPE keybroker_grant_cache_entries gauge",
        f"keybroker_grant_cache_entries {proxy.grants.size}",
    ]
    return PlainTextResponse(
        "\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8"
    )


routes = [Route("/metrics", metrics)]
