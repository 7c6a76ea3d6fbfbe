"""Framing that fails closed: a body is read one way only, or it is refused.

The proxy decides on what it reads in a body (the model, the ids it names); the upstream acts
on what it reads. Wherever two parsers could read the same bytes differently, this module
refuses the bytes instead of guessing: exactly one Content-Type (RFC 9110 §8.3), parsed
strictly, JSON per RFC 8259 in strict UTF-8 (§8.1) with no duplicate keys (§4: names SHOULD be
unique, and parsers disagree on which duplicate wins), no NaN or Infinity (not JSON), and
multipart/form-data (RFC 7578) whose parts each carry one plain Content-Disposition.
Every message of FramingError is safe to return to the app.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import MultipartParser


class FramingError(ValueError):
    """The body's framing is ambiguous or not what the endpoint takes."""


JSON = "application/json"
MULTIPART = "multipart/form-data"

# RFC 9110 §5.6.2 token, §5.6.4 quoted-string without quoted-pairs: a backslash escape is one
# more way to spell the same value, so it is refused rather than unescaped.
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"([^"\\\x00-\x08\x0a-\x1f\x7f]*)"'
_MEDIA_TYPE = re.compile(rf"({_TCHARS})/({_TCHARS})")
_PARAMETER = re.compile(rf"[ \t]*;[ \t]*({_TCHARS})=(?:({_TCHARS})|{_QUOTED})")
# RFC 2046 §5.1.1: 1 to 70 characters from bchars, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


@dataclass(frozen=True)
class MediaType:
    essence: str  # type/subtype, lower-case
    params: tuple[tuple[str, str], ...]  # names lower-case, values as sent

    def param(self, name: str) -> str | None:
        return dict(self.params).get(name)


def parse_parameters(text: str) -> tuple[tuple[str, str], ...]:
    """``; name=value`` pairs, each name once (RFC 9110 §5.6.6), or FramingError."""
    params: list[tuple[str, str]] = []
    at = 0
    while at < len(text):
        found = _PARAMETER.match(text, at)
        if found is None:
            if text[at:].strip(" \t") == "":
                break
            raise FramingError("A header parameter is malformed or escaped.")
        name = found.group(1).lower()
        if any(name == seen for seen, _ in params):
            raise FramingError(f"The header parameter {name!r} is given more than once.")
        value = found.group(2) if found.group(2) is not None else found.group(3)
        params.append((name, value))
        at = found.end()
    return tuple(params)


def media_type(value: bytes) -> MediaType:
    try:
        text = value.decode("ascii").strip(" \t")
    except UnicodeDecodeError:
        raise FramingError("The Content-Type is not ASCII.") from None
    found = _MEDIA_TYPE.match(text)
    if found is None:
        raise FramingError("The Content-Type is malformed.")
    essence = f"{found.group(1)}/{found.group(2)}".lower()
    return MediaType(essence, parse_parameters(text[found.end() :]))


def one_content_type(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The request's only Content-Type (None if it has none); two are refused, since which one
    a server reads is up to the server (RFC 9110 §5.3)."""
    found = [value for name, value in headers if name == b"content-type"]
    if len(found) > 1:
        raise FramingError("The request has more than one Content-Type.")
    return found[0] if found else None


def body_type(value: bytes | None) -> MediaType:
    """The checked media type of a request body: JSON (UTF-8 only) or multipart/form-data with
    one valid boundary; anything else is refused."""
    if value is None:
        raise FramingError("A request body needs a Content-Type: application/json or multipart.")
    parsed = media_type(value)
    if parsed.essence == JSON:
        charset = parsed.param("charset")
        if any(name != "charset" for name, _ in parsed.params) or (
            charset is not None and charset.lower() != "utf-8"
        ):
            raise FramingError("JSON bodies must be UTF-8, with no other parameters.")
        return parsed
    if parsed.essence == MULTIPART:
        boundary = parsed.param("boundary")
        if boundary is None or len(parsed.params) != 1 or not _BOUNDARY.fullmatch(boundary):
            raise FramingError("A multipart body needs exactly one valid boundary parameter.")
        return parsed
    raise FramingError(
        f"Content-Type {parsed.essence!r} is not accepted here: send application/json "
        "or multipart/form-data."
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise FramingError("The JSON body names a key more than once.")
    return data


def _no_constant(name: str) -> Any:
    raise FramingError(f"{name} is not JSON (RFC 8259 §6).")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def strict_json(body: bytes) -> dict[str, Any]:
    """The body's top-level object, read as RFC 8259 says and nothing looser."""
    try:
        text = body.decode("utf-8")  # strict: one invalid byte is an error (RFC 8259 §8.1)
    except UnicodeDecodeError:
        raise FramingError("The JSON body is not valid UTF-8.") from None
    if text.startswith("\ufeff"):
        raise FramingError("The JSON body starts with a byte order mark (RFC 8259 §8.1).")
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError:
        raise FramingError("The body is not valid JSON.") from None
    except RecursionError:
        raise FramingError("The JSON body is nested too deeply.") from None
    if not isinstance(data, dict):
        raise FramingError("The JSON body must be an object.")
    if _SURROGATE_ESCAPE.search(text):
        try:  # an escaped lone surrogate is no Unicode text (RFC 8259 §8.2)
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise FramingError("The JSON body escapes a lone surrogate.") from None
    return data


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    data: bytes


_DISPOSITION = re.compile(r"form-data", re.IGNORECASE)


def _disposition(value: bytes) -> tuple[str, str | None]:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise FramingError("A multipart part's name is not UTF-8.") from None
    found = _DISPOSITION.match(text)
    if found is None:
        raise FramingError("A multipart part is not form-data.")
    params = dict(parse_parameters(text[found.end() :]))
    # name* and filename* (RFC 5987 encodings) are refused by RFC 7578 §4.2 and read as
    # another parameter by some parsers: only the plain pair is taken.
    if "name" not in params or set(params) - {"name", "filename"}:
        raise FramingError("A multipart part needs exactly name (and maybe filename).")
    return params["name"], params.get("filename")


# Fields the proxy decides on. A part named like one of them but not exactly (``Model``,
# ``model[]``) is read by some servers as that field: refused, since the check would miss it.
POLICY_FIELDS = frozenset({"model", "stream"})


def looks_like_policy_field(name: str) -> bool:
    bare = name.lower().replace("[", "").replace("]", "").strip()
    return bare in POLICY_FIELDS and name not in POLICY_FIELDS


def _crlf_framing(body: bytes, delimiter: bytes) -> None:
    """Each delimiter on a line of its own, ended by CRLF, and part headers in CRLF lines
    only (RFC 2046 §5.1.1, RFC 5322 §2.1): a bare LF or CR is read as a line break by some
    parsers and as data by others."""
    at = body.find(delimiter)
    while at >= 0:
        after = at + len(delimiter)
        if at > 0 and body[at - 2 : at] != b"\r\n":
            raise FramingError("A multipart boundary must start a CRLF line.")
        if body.startswith(b"--", after):
            return  # the closing delimiter (the caller checked that it ends the body)
        if not body.startswith(b"\r\n", after):
            raise FramingError("A multipart boundary must end its line with CRLF.")
        end = body.find(b"\r\n\r\n", after)
        head = body[after + 2 : end] if end >= 0 else b""
        if end < 0 or b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
            raise FramingError("Multipart part headers must be CRLF lines.")
        at = body.find(delimiter, end)


def multipart_parts(body: bytes, kind: MediaType) -> list[Part]:
    """Every part of a multipart/form-data body, or FramingError when it could be read
    another way: a preamble or epilogue, a header given twice, a part without a plain name,
    a Content-Transfer-Encoding (RFC 7578 §4.7), a nested multipart part (RFC 7578 §4.3 drops
    multipart/mixed), a part's data holding the boundary (RFC 2046 §5.1.1: it must not; a
    bare-LF delimiter is read as one by lenient parsers), a name like a policy field."""
    boundary = (kind.param("boundary") or "").encode()
    if not body.startswith(b"--" + boundary + b"\r\n"):
        raise FramingError("The multipart body must start with its boundary.")
    end = b"\r\n--" + boundary + b"--"
    if not (body.endswith(end) or body.endswith(end + b"\r\n")):
        raise FramingError("The multipart body must end with its closing boundary.")
    delimiter = b"--" + boundary
    _crlf_framing(body, delimiter)
    parts: list[Part] = []
    state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}, "data": []}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        name = state["field"].lower()
        if name in state["headers"]:
            raise FramingError("A multipart part repeats a header.")
        state["headers"][name] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_begin() -> None:
        state["headers"], state["data"] = {}, []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        headers = state["headers"]
        if b"content-transfer-encoding" in headers:
            raise FramingError("Multipart parts may not set Content-Transfer-Encoding.")
        if b"content-disposition" not in headers:
            raise FramingError("A multipart part has no Content-Disposition.")
        name, filename = _disposition(headers[b"content-disposition"])
        if looks_like_policy_field(name):
            raise FramingError(f"A multipart part is named {name!r}: only exact names are read.")
        if headers.get(b"content-type", b"").strip().lower().startswith(b"multipart/"):
            raise FramingError("A multipart part may not itself be multipart.")
        data = b"".join(state["data"])
        if delimiter in data:
            raise FramingError("A multipart part's data holds the boundary.")
        parts.append(Part(name, filename, data))

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
    except FramingError:
        raise
    except Exception as exc:  # python-multipart raises several error types
        raise FramingError("The multipart body could not be read.") from exc
    return parts


def multipart_model(parts: list[Part]) -> str | None:
    """The one ``model`` field of a form (None if there is none); two are refused."""
    models = [p for p in parts if p.name == "model"]
    if len(models) > 1:
        raise FramingError("The request names 'model' more than once.")
    if not models:
        return None
    try:
        return models[0].data.decode("utf-8")
    except UnicodeDecodeError:
        raise FramingError("The model field is not UTF-8.") from None
