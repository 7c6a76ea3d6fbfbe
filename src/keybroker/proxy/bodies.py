"""Reading a request body once, checked (proxy.framing), without re-serialising what it sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive

from keybroker.proxy import framing, ownership, policy, scopes
from keybroker.proxy.framing import FramingError
from keybroker.proxy.policy import BodyFacts

JSON_LIMIT = 32 * 1024 * 1024
MULTIPART_LIMIT = 128 * 1024 * 1024
BODYLESS = frozenset({"GET", "DELETE"})
# Multipart bodies that carry no model and may be large (a file of up to 512 MB): streamed
# upstream with only their Content-Type checked. Every other multipart body is read whole.
STREAMED_MULTIPART = frozenset({"/files", "/uploads/{upload_id}/parts"})


class TooLarge(Exception):
    pass


@dataclass
class RequestBody:
    body: bytes | AsyncIterator[bytes] | None
    facts: BodyFacts
    fields: dict[str, Any] | None = None  # a JSON body's top-level object


async def read_all(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def stream_body(receive: Receive) -> AsyncIterator[bytes]:
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError
        yield message.get("body", b"")
        more = message.get("more_body", False)


def _declared(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length")
    return int(value) if value is not None and value.isdigit() else None


async def read_request(
    method: str,
    template: str,
    headers: list[tuple[bytes, bytes]],
    lookup: dict[bytes, bytes],
    receive: Receive,
) -> RequestBody:
    """The body of a request to a listed route, with its facts; FramingError (400) for a body
    that could be read two ways, TooLarge (413) past the limits."""
    content_type = framing.one_content_type(headers)
    declared = _declared(lookup)
    has_body = declared != 0 and (declared is not None or b"transfer-encoding" in lookup)
    if method in BODYLESS:
        if has_body and await read_all(receive, JSON_LIMIT):
            raise FramingError(f"{method} requests take no body.")
        return RequestBody(None, BodyFacts())
    if not has_body:
        if content_type is not None:
            framing.body_type(content_type)
        return RequestBody(b"", BodyFacts(content_type=content_type))
    kind = framing.body_type(content_type)
    if kind.essence == framing.MULTIPART and (method, template) not in scopes.MULTIPART_PAIRS:
        raise FramingError(f"{method} /v1{template} takes a JSON body, not multipart/form-data.")
    if kind.essence == framing.JSON:
        if declared is not None and declared > JSON_LIMIT:
            raise TooLarge
        body = await read_all(receive, JSON_LIMIT)
        if not body:
            return RequestBody(body, BodyFacts(content_type=content_type))
        fields = framing.strict_json(body)
        model = fields.get("model")
        if "model" in fields and not isinstance(model, str):
            raise FramingError("'model' must be a string.")
        store = fields.get("store")
        facts = BodyFacts(
            content_type=content_type,
            model=model,
            stream=fields.get("stream") is True,
            store=store if isinstance(store, bool) else None,
            references=ownership.body_references(body, fields),
            models=policy.nested_models(fields),
            stored_prompt=policy.stored_prompt(fields),
        )
        return RequestBody(body, facts, fields)
    if template in STREAMED_MULTIPART:
        return RequestBody(stream_body(receive), BodyFacts(content_type=content_type))
    if declared is not None and declared > MULTIPART_LIMIT:
        raise TooLarge
    body = await read_all(receive, MULTIPART_LIMIT)
    parts = framing.multipart_parts(body, kind)
    model = framing.multipart_model(parts)
    facts = BodyFacts(
        content_type=content_type,
        model=model,
        models=(model,) if model is not None else (),
        stream=any(p.name == "stream" and p.data == b"true" for p in parts),
    )
    return RequestBody(body, facts)


def add_include_usage(body: bytes, fields: dict[str, Any]) -> bytes | None:
    """The body with ``stream_options.include_usage`` on, for a streamed chat completion that
    did not ask for usage; None when nothing needs changing."""
    options = fields.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    if options is None:
        # Append before the closing brace: the app's bytes stay as they were.
        end = body.rstrip()
        if end.endswith(b"}"):
            return end[:-1] + b',"stream_options":{"include_usage":true}}'
    fields = {
        **fields,
        "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True},
    }
    return json.dumps(fields).encode()
