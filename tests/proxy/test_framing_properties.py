"""Property-based framing tests: the upstream client's parser (http1, llhttp through httptools)
must accept or refuse each generated answer as h11 does, and hand over the same body.

Generated: status lines, framing headers (Content-Length and Transfer-Encoding, well-formed,
malformed and conflicting), other fields (some with bytes a field may not hold), bodies framed
by length, by chunks (some corrupted) or by the connection's end, cut at random points into
reads. An answer counts as accepted when a whole message arrived before the connection ended.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keybroker.proxy.http1 import UpstreamResponse, _Connection


class _Pool:
    write_timeout = 5.0

    def forget(self, conn: object) -> None:
        pass

    def keep(self, conn: object) -> None:
        pass


class _Transport:
    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def ours(loop: asyncio.AbstractEventLoop, reads: list[bytes]) -> bytes | None:
    """The body our parser hands over for these reads then the end, or None if refused."""

    async def parse() -> bytes | None:
        conn = _Connection(_Pool())  # type: ignore[arg-type]
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        response = UpstreamResponse(conn, "GET", 5.0, 1 << 20)
        conn.begin(response)
        for data in reads:
            if conn.closed:
                break
            conn.data_received(data)
        if not conn.closed:
            conn.eof_received()
            conn.connection_lost(None)
        if response._error is not None or not response.complete:
            return None
        return b"".join(response._chunks)

    return loop.run_until_complete(parse())


def h11s(reads: list[bytes]) -> bytes | None:
    """What h11, as the client of one GET, makes of the same reads then the end."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    body = b""
    try:
        for data in [*reads, b""]:
            client.receive_data(data)
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    break
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Data):
                    body += event.data
                if isinstance(event, h11.EndOfMessage):
                    return body
                if isinstance(event, h11.ConnectionClosed):
                    return None
    except h11.RemoteProtocolError:
        return None
    return None


token = st.text("abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
field_value = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz ,;=/0123456789", max_size=20),
    st.sampled_from(["a\x00b", "a\x7fb", " lead", "trail ", "\tx"]),
)
lengths = st.one_of(
    st.integers(0, 64).map(str),
    st.sampled_from(["", "abc", "-1", "+3", "1 2", "0x10", "3,3", "3, 4", " 3"]),
)
codings = st.sampled_from(["chunked", "gzip, chunked", "chunked, gzip", "identity", "CHUNKED", ""])


@st.composite
def answers(draw: st.DrawFn) -> list[bytes]:
    status = draw(st.sampled_from([200, 201, 202, 204, 206, 304, 400, 404, 418, 500, 503]))
    version = draw(st.sampled_from(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/1.2", "HTTP/2"]))
    fields: list[tuple[str, str]] = []
    lengths_given = draw(st.lists(lengths, max_size=2))
    fields += [("content-length", v) for v in lengths_given]
    te = draw(st.lists(codings, max_size=2))
    fields += [("transfer-encoding", v) for v in te]
    fields += draw(st.lists(st.tuples(token, field_value), max_size=4))
    if draw(st.booleans()):
        fields.append(draw(st.sampled_from([("bad name", "x"), ("bad:", "x"), ("", "x")])))
    fields = draw(st.permutations(fields))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["as-declared", "chunked", "bad-chunk", "raw"]))
    if framing == "chunked" or framing == "bad-chunk":
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        payload = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts if p) + b"0\r\n\r\n"
        if framing == "bad-chunk":
            payload = payload.replace(b"\r\n", draw(st.sampled_from([b"\n", b"\r", b" \r\n"])), 1)
    else:
        payload = body
    head = f"{version} {status} Reason\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    raw = head.encode("latin-1") + b"\r\n" + payload
    splits = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=3)))
    reads = [raw[a:b] for a, b in zip([0, *splits], [*splits, len(raw)], strict=True)]
    return [data for data in reads if data]  # a read is never empty (b"" is h11's end)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reads=answers())
def test_the_parser_accepts_and_refuses_as_h11_does(
    loop: asyncio.AbstractEventLoop, reads: list[bytes]
) -> None:
    mine, theirs = ours(loop, reads), h11s(reads)
    raw = b"".join(reads)
    if mine is None and theirs is not None:
        # Refused where h11 is lenient: only where RFC 9112 lets a client refuse.
        assert stricter(raw), raw
    else:
        assert mine == theirs, raw


def stricter(raw: bytes) -> bool:
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    # RFC 9112 §2.3 says to read HTTP/1.2 as 1.1; llhttp refuses an unknown minor version.
    # Refusing (a 502) is safe, and no upstream sends one.
    if head.startswith(b"http/1.2 "):
        return True
    names = [line.split(b":", 1)[0] for line in head.split(b"\r\n")[1:]]
    # RFC 9110 §5.5: a field value holds no control byte other than HTAB (h11 lets DEL by).
    if any(b in head for b in (b"\x7f", b"\x00")):
        return True
    # RFC 9112 §7.1.1: whitespace after a chunk size only before a chunk extension's ";".
    if b"chunked" in head and re.search(rb"\r\n[0-9a-f]+[ \t]+\r\n", raw.lower()):
        return True
    # RFC 9112 §6.3: both framing fields "ought to be handled as an error" (smuggling).
    if b"content-length" in names and b"transfer-encoding" in names:
        return True
    # RFC 9110 §8.6: a recipient MAY reject a Content-Length repeated, even with equal values,
    # whether as fields or as a list in one field.
    lengths = [line for line in head.split(b"\r\n")[1:] if line.startswith(b"content-length:")]
    return len(lengths) > 1 or any(b"," in line for line in lengths)
