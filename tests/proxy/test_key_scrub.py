"""The owner's key never reaches the app: an upstream (or a hostile one) that echoes the key
it was given, in a 200 body, a streamed event, a redirect, a header, JSON-escaped, masked or
split across chunks, is relayed with the key overwritten (proxy/key_scrub.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from keybroker.proxy.key_scrub import KeyScrubber
from tests.helpers import GOOD_KEY
from tests.live import Live
from tests.upstream import Upstream, build_app, serve_in_thread, stop_upstream


def _escaped(key: str) -> str:
    return key.replace("-", "\\u002d")


def _shown(mode: str, key: str) -> Response:
    """What a key-echoing upstream answers in each mode."""
    json_type = "application/json"
    if mode == "ok-json":
        return Response(json.dumps({"id": "x", "echo": key}), 200, media_type=json_type)
    if mode == "ok-escaped":
        body = '{"id": "x", "a": "' + _escaped(key) + '", "b": "\\u0073' + key[1:] + '"}'
        return Response(body, 200, media_type=json_type)
    if mode == "ok-masked":
        body = json.dumps({"a": f"{key[:8]}{'*' * 20}{key[-4:]}", "b": f"{key[:8]}…{key[-4:]}"})
        return Response(body, 200, media_type=json_type)
    if mode == "headers":
        relayed = ["x-request-id", "openai-version", "x-ratelimit-key", "openai-processing-ms"]
        headers = {name: key for name in relayed}
        headers["content-disposition"] = f'attachment; filename="{key}"'
        return Response(b'{"ok": true}', 200, media_type=json_type, headers=headers)
    if mode == "sse":
        event = {"type": "error", "error": {"message": f"Incorrect API key provided: {key}"}}
        body = f"event: error\ndata: {json.dumps(event)}\n\n"
        return Response(body, 200, media_type="text/event-stream")
    if mode == "redirect":
        body = json.dumps({"message": key})
        return Response(body, 302, media_type=json_type, headers={"location": "/x"})
    if mode in ("split", "split-sse"):
        text = '{"echo": "' + key + '", "and": "' + _escaped(key) + '"}'
        if mode == "split-sse":
            text = f"data: {text}\n\n"

        async def chunks() -> AsyncIterator[bytes]:
            for at in range(0, len(text), 5):  # the key lands across many chunk boundaries
                yield text[at : at + 5].encode()

        kind = "text/event-stream" if mode == "split-sse" else "application/octet-stream"
        return StreamingResponse(chunks(), 200, media_type=kind)
    if mode == "error-escaped":
        body = (
            '{"error": {"message": "Incorrect API key provided: \\u0073k\\u002d' + key[3:] + '"}}'
        )
        return Response(body, 401, media_type=json_type)
    raise AssertionError(mode)


MODES = [
    "ok-json",
    "ok-escaped",
    "ok-masked",
    "headers",
    "sse",
    "redirect",
    "split",
    "split-sse",
    "error-escaped",
]


ECHOED: list[str] = []  # the modes the echoing upstream answered


def _echoing(inner: ASGIApp) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            mode = dict(scope["headers"]).get(b"x-stainless-test-leak")
            if mode is not None:
                auth = dict(scope["headers"])[b"authorization"].decode()
                ECHOED.append(mode.decode())
                await _shown(mode.decode(), auth.removeprefix("Bearer "))(scope, receive, send)
                return
        await inner(scope, receive, send)

    return app


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    state = Upstream()
    server, url = serve_in_thread(_echoing(build_app(state)))
    state.url = f"{url}/v1"
    state.server, state.thread = server, server.thread
    yield state
    stop_upstream(state)


def _no_key(text: str) -> None:
    assert GOOD_KEY not in text
    assert _escaped(GOOD_KEY) not in text
    assert GOOD_KEY[-4:] not in text  # nor a masked echo's real last four
    assert GOOD_KEY[3:] not in text


@pytest.mark.parametrize("mode", MODES)
def test_no_echo_of_the_key_reaches_the_app(live: Live, mode: str) -> None:
    token = live.grant()
    response = httpx.get(
        f"{live.url}/v1/models",
        headers={"authorization": f"Bearer {token}", "x-stainless-test-leak": mode},
        follow_redirects=False,
    )
    assert ECHOED[-1] == mode  # it did go up, and the upstream echoed the key
    for name, value in response.headers.multi_items():
        _no_key(f"{name}: {value}")
    _no_key(response.text)
    if "content-length" in response.headers:
        assert int(response.headers["content-length"]) == len(response.content)
    if response.headers.get("content-type", "").startswith("application/json"):
        _no_key(json.dumps(response.json(), ensure_ascii=False))  # escapes decoded
    if mode == "sse":
        assert response.text.startswith("event: error\ndata: ")
        assert "Incorrect API key provided: ****" in response.text
    if mode == "redirect":
        assert response.status_code == 302


@given(
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    before=st.binary(max_size=60),
    escaped=st.booleans(),
)
def test_a_key_split_anywhere_across_chunks_is_found(
    cuts: list[int], before: bytes, escaped: bool
) -> None:
    key = GOOD_KEY.encode()
    shown = _escaped(GOOD_KEY).encode() if escaped else key
    body = before.replace(b"\\", b"") + b' "' + shown + b'" tail'
    relay = KeyScrubber(GOOD_KEY).stream()
    out: list[bytes] = []
    last = 0
    for cut in sorted(c % (len(body) + 1) for c in cuts):
        out.append(relay.take(body[last:cut]))
        last = cut
    out.append(relay.take(body[last:]))
    out.append(relay.rest())
    joined = b"".join(out)
    assert len(joined) == len(body)  # overwritten byte for byte: Content-Length holds
    assert key not in joined
    assert shown not in joined
    assert joined.endswith(b'" tail')


def test_text_without_the_key_is_relayed_unchanged() -> None:
    scrubber = KeyScrubber(GOOD_KEY)
    text = b'{"a": "sk-other-not-ours", "b": "\\u00e9t\\u00e9", "c": "KKKK"}'
    assert scrubber.scrub(text) == text
    hidden: Any = scrubber.scrub(b"x " + GOOD_KEY.encode(), b"[hidden]")
    assert hidden == b"x [hidden]"
