"""``GET /metrics``: a few Prometheus counters and gauges (text exposition format 0.0.4)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from keybroker.context import get_context


async def metrics(request: Request) -> Response:
    ctx = get_context(request)
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
