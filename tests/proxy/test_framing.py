"""Framing fails closed: the parsers (property-based) and each trick through the live proxy,
refused before the upstream."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from keybroker.proxy import framing, scopes
from keybroker.proxy.framing import FramingError
from tests.live import Live

KEY = st.text(min_size=1, max_size=8)
SCALAR = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
SCALAR = SCALAR | st.floats(allow_nan=False, allow_infinity=False)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEY, inner, max_size=4),
    max_leaves=20,
)
OBJECT = st.dictionaries(KEY, VALUE, max_size=6)


@given(OBJECT, st.booleans())
def test_strict_json_reads_what_json_writes(data: dict[str, Any], ascii_only: bool) -> None:
    body = json.dumps(data, ensure_ascii=ascii_only).encode()
    assert framing.strict_json(body) == json.loads(body)


@given(OBJECT.filter(bool), st.data())
def test_a_repeated_key_at_any_depth_is_refused(data: dict[str, Any], draw: st.DataObject) -> None:
    key = draw.draw(st.sampled_from(sorted(data)))
    text = json.dumps(data)
    doubled = "{" + json.dumps(key) + ": 1, " + text[1:]
    with pytest.raises(FramingError):
        framing.strict_json(doubled.encode())
    nested = json.dumps({"outer": [0]}).replace("[0]", doubled)
    with pytest.raises(FramingError):
        framing.strict_json(nested.encode())


@given(OBJECT, st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80"]))
def test_one_invalid_utf8_byte_is_refused(data: dict[str, Any], bad: bytes) -> None:
    body = json.dumps({**data, "k": "a"}).encode().replace(b'"a"', b'"a' + bad + b'"')
    with pytest.raises(FramingError):
        framing.strict_json(body)


@given(st.binary(max_size=200))
def test_strict_json_only_ever_raises_framing_errors(body: bytes) -> None:
    with contextlib.suppress(FramingError):
        assert isinstance(framing.strict_json(body), dict)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "gpt-4o-mini",}',
        b'{"model": "gpt-4o-mini"} x',
        b'\xef\xbb\xbf{"model": "gpt-4o-mini"}',
        b'{"model": "gpt-4o-mini", "n": NaN}',
        b'{"model": "gpt-4o-mini", "n": Infinity}',
        b'{"model": "gpt-4o-mini", "mod\\u0065l": "gpt-4o"}',
        b'{"model": "gpt-4o-mini\\ud800"}',
        b'["model"]',
        '{"model": "gpt-4o-mini"}'.encode("utf-16"),
    ],
)
def test_loose_json_is_refused(body: bytes) -> None:
    with pytest.raises(FramingError):
        framing.strict_json(body)


PART_NAME = st.text(
    st.characters(blacklist_characters='"\\\r\n', blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=10,
)


def form(fields: list[tuple[str, bytes, str | None]], boundary: str = "b0und") -> bytes:
    out = b""
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = framing.body_type(b"multipart/form-data; boundary=b0und")


@given(
    st.lists(
        st.tuples(PART_NAME, st.binary(max_size=30), st.none() | PART_NAME),
        min_size=1,
        max_size=5,
    )
)
def test_multipart_reads_what_a_form_writes(fields: list[tuple[str, bytes, str | None]]) -> None:
    fields = [(n, v.replace(b"--b0und", b"--x"), f) for n, v, f in fields]
    assume(not any(framing.looks_like_policy_field(n) for n, _, _ in fields))
    parts = framing.multipart_parts(form(fields), MULTIPART)
    assert [(p.name, p.data, p.filename) for p in parts] == fields


@given(st.binary(max_size=300))
def test_multipart_only_ever_raises_framing_errors(body: bytes) -> None:
    with contextlib.suppress(FramingError):
        framing.multipart_parts(b"--b0und\r\n" + body, MULTIPART)


@given(st.text(max_size=80))
def test_content_types_only_ever_raise_framing_errors(value: str) -> None:
    try:
        parsed = framing.body_type(value.encode("utf-8"))
    except FramingError:
        return
    assert parsed.essence in (framing.JSON, framing.MULTIPART)


def disposition(value: str) -> bytes:
    return f"--b0und\r\nContent-Disposition: {value}\r\n\r\nwhisper-1\r\n--b0und--\r\n".encode()


MULTIPART_TRICKS = {
    "name*": disposition("form-data; name*=utf-8''model"),
    "name* beside name": disposition("form-data; name=\"x\"; name*=utf-8''model"),
    "two names": disposition('form-data; name="file"; name="model"'),
    "escaped name": disposition('form-data; name="mod\\el"'),
    "escaped quote": disposition('form-data; name="x\\"; name=model"'),
    "no name": disposition("form-data"),
    "not form-data": disposition('attachment; name="model"'),
    "filename*": disposition("form-data; name=\"f\"; filename*=utf-8''a.mp3"),
    "two dispositions": (
        b'--b0und\r\nContent-Disposition: form-data; name="x"\r\n'
        b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--b0und--\r\n'
    ),
    "transfer encoding": (
        b'--b0und\r\nContent-Disposition: form-data; name="model"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nd2hpc3Blci0x\r\n--b0und--\r\n"
    ),
    "preamble": b"hello\r\n" + form([("model", b"whisper-1", None)]),
    "epilogue": form([("model", b"whisper-1", None)]) + b"more",
    "unclosed": form([("model", b"whisper-1", None)])[: -len(b"--b0und--\r\n")],
    "two models": form([("model", b"gpt-4o-mini-transcribe", None), ("model", b"whisper-1", None)]),
    "Model": form([("Model", b"gpt-4o-mini-transcribe", None)]),
    "model[]": form([("model[]", b"gpt-4o-mini-transcribe", None)]),
    "STREAM": form([("model", b"whisper-1", None), ("STREAM", b"true", None)]),
    "nested multipart": (
        b'--b0und\r\nContent-Disposition: form-data; name="x"\r\n'
        b"Content-Type: multipart/mixed; boundary=CC\r\n\r\n--CC\r\n"
        b'Content-Disposition: form-data; name="model"\r\n\r\ngpt-4o-mini-transcribe\r\n'
        b"--CC--\r\n--b0und--\r\n"
    ),
    "LF-only delimiter": (
        b'--b0und\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\n'
        b'ID3\r\n--b0und\nContent-Disposition: form-data; name="model"\n\n'
        b"gpt-4o-mini-transcribe\r\n--b0und--\r\n"
    ),
    "LF-only headers": (
        b'--b0und\r\nContent-Disposition: form-data; name="x"\nContent-Type: text/plain\r\n\r\n'
        b"a\r\n--b0und--\r\n"
    ),
    "boundary in data": form([("file", b"a\r\n--b0undX", "a.mp3"), ("model", b"whisper-1", None)]),
}


@pytest.mark.parametrize("trick", sorted(MULTIPART_TRICKS))
def test_ambiguous_multipart_is_refused(trick: str) -> None:
    with pytest.raises(FramingError):
        framing.multipart_model(framing.multipart_parts(MULTIPART_TRICKS[trick], MULTIPART))


@pytest.mark.parametrize(
    "value",
    [
        b"text/plain",
        b"application/json-patch+json",
        b"application/json; charset=latin-1",
        b"application/json; charset=utf-8; charset=latin-1",
        b"application/json; foo=bar",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data",
        b"multipart/form-data; boundary=a; boundary=b",
        b'multipart/form-data; boundary="a\\b"',
        b"multipart/form-data; boundary=a; charset=utf-8",
        b"application/json\x00",
        "application/json; charset=ütf-8".encode(),
    ],
)
def test_other_content_types_are_refused(value: bytes) -> None:
    with pytest.raises(FramingError):
        framing.body_type(value)


def test_two_content_types_are_refused() -> None:
    headers = [(b"content-type", b"application/json"), (b"content-type", b"text/plain")]
    with pytest.raises(FramingError):
        framing.one_content_type(headers)


SEGMENT = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~:"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))


@given(st.sampled_from(scopes.all_pairs()), st.data())
def test_the_matcher_finds_the_route_a_path_was_made_from(
    route: scopes.Route, data: st.DataObject
) -> None:
    parts = [data.draw(SEGMENT) if p.startswith("{") else p for p in route.parts]
    path = "/" + "/".join(parts)
    found = scopes.match(route.method, path)
    assert found is not None
    # The route found spells the same path with its parameters; a literal route may win over a
    # template one (POST /responses/compact over a parameter), never the other way round.
    filled = dict(found.params)
    spelled = [filled[p[1:-1]] if p.startswith("{") else p for p in found.route.parts]
    assert "/" + "/".join(spelled) == path
    assert found.route.method == route.method
    if found.route != route:
        assert sum(p.startswith("{") for p in found.route.parts) < sum(
            p.startswith("{") for p in route.parts
        )


@given(st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "TRACE", "HEAD"]), st.data())
def test_the_matcher_never_matches_another_method_or_shape(
    method: str, data: st.DataObject
) -> None:
    path = "/" + "/".join(data.draw(st.lists(SEGMENT, min_size=1, max_size=6)))
    found = scopes.match(method, path)
    if found is None:
        return
    assert method in scopes.METHODS
    assert (method, found.route.template) in {(r.method, r.template) for r in scopes.all_pairs()}
    assert len(found.route.parts) == path.count("/")


CHAT = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
LIVE_TRICKS: list[tuple[str, str, list[tuple[str, bytes]], bytes]] = [
    ("text/plain", "/v1/chat/completions", [("content-type", b"text/plain")], CHAT),
    ("no content type", "/v1/chat/completions", [], CHAT),
    (
        "two content types",
        "/v1/chat/completions",
        [("content-type", b"application/json"), ("content-type", b"text/plain")],
        CHAT,
    ),
    (
        "trailing comma",
        "/v1/chat/completions",
        [("content-type", b"application/json")],
        CHAT[:-1] + b",}",
    ),
    (
        "invalid utf-8",
        "/v1/chat/completions",
        [("content-type", b"application/json")],
        CHAT.replace(b"hi", b"h\xff"),
    ),
    (
        "json-ish type",
        "/v1/chat/completions",
        [("content-type", b"application/json-seq")],
        CHAT,
    ),
    *[
        (
            f"multipart {name}",
            "/v1/audio/transcriptions",
            [("content-type", b"multipart/form-data; boundary=b0und")],
            body,
        )
        for name, body in sorted(MULTIPART_TRICKS.items())
    ],
]


@pytest.mark.parametrize(
    ("name", "path", "headers", "body"), LIVE_TRICKS, ids=[t[0] for t in LIVE_TRICKS]
)
def test_each_framing_trick_is_refused_before_the_upstream(
    live: Live, name: str, path: str, headers: list[tuple[str, bytes]], body: bytes
) -> None:
    token = live.grant(scopes=["chat", "audio"], models="gpt-4o-mini gpt-4o-mini-transcribe")
    before = len(live.upstream.seen)
    response = httpx.post(
        f"{live.url}{path}",
        content=body,
        headers=[("authorization", f"Bearer {token}".encode()), *headers],  # type: ignore[list-item]
    )
    assert response.status_code in (400, 403), response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert len(live.upstream.seen) == before


def test_the_checked_content_type_is_the_one_forwarded(live: Live) -> None:
    token = live.grant()
    response = httpx.post(
        f"{live.url}/v1/chat/completions",
        content=CHAT.replace(b"gpt-4o", b"gpt-4o-mini"),
        headers={
            "authorization": f"Bearer {token}",
            "content-type": "Application/JSON; charset=UTF-8",
        },
    )
    assert response.status_code == 200
    sent = live.upstream.seen[-1]
    assert sent.headers["content-type"] == "Application/JSON; charset=UTF-8"
    assert list(sent.headers).count("content-type") == 1


JSON_ONLY = [
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/batches",
    "/v1/vector_stores/vs_1/files",
    "/v1/uploads",
    "/v1/embeddings",
]


def test_multipart_only_where_the_api_takes_it(live: Live) -> None:
    token = live.grant(scopes=["chat", "files", "batches", "embeddings"], models="gpt-4o-mini")
    body = form([("model", b"gpt-4o-mini", None), ("input_file_id", b"file-x", None)])
    for path in JSON_ONLY:
        before = len(live.upstream.seen)
        response = httpx.post(
            f"{live.url}{path}",
            content=body,
            headers={
                "authorization": f"Bearer {token}",
                "content-type": "multipart/form-data; boundary=b0und",
            },
        )
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_body"
        assert len(live.upstream.seen) == before, path


def test_bodies_on_get_and_delete_are_refused(live: Live) -> None:
    token = live.grant(scopes=["models"])
    before = len(live.upstream.seen)
    response = httpx.request(
        "GET",
        f"{live.url}/v1/models",
        content=b'{"model": "x"}',
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert len(live.upstream.seen) == before
