"""Reading the model an app asks for, without re-serialising what it sent."""

from __future__ import annotations

import json
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header


class BodyError(ValueError):
    """The body cannot be checked; the message is safe to return."""


def _no_duplicate_model(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if keys.count("model") > 1:
        # Parsers disagree on duplicate keys (first wins or last wins): refuse the ambiguity.
        raise BodyError("The request names 'model' more than once.")
    return dict(pairs)


def json_fields(body: bytes) -> dict[str, Any] | None:
    """The top-level object of a JSON body, or None when it is not a JSON object."""
    # A second "model" key needs the literal twice or an escape (\u006d...): only then is
    # the slower pair-by-pair parse needed, which sees every object of a long chat history.
    suspicious = body.count(b'"model"') > 1 or b"\\u" in body
    try:
        data = (
            json.loads(body, object_pairs_hook=_no_duplicate_model)
            if suspicious
            else json.loads(body)
        )
    except BodyError:
        raise
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def multipart_values(body: bytes, content_type: bytes, name: str) -> list[str]:
    """Every value of the form field ``name`` in a multipart/form-data body."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BodyError("multipart body without a boundary")
    values: list[str] = []
    state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}, "data": []}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_begin() -> None:
        state["headers"], state["data"] = {}, []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition"))
        if disposition.get(b"name") == name.encode():
            values.append(b"".join(state["data"]).decode("utf-8", "replace"))

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # python-multipart raises several error types
        raise BodyError("The multipart body could not be read.") from exc
    return values


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
