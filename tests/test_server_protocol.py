from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from keybroker import send_now as extension
from keybroker import server_protocol
from keybroker.server_protocol import GuardedProtocol, JoinedWrites, JoinedWritesProtocol
from tests.upstream import serve_in_thread


class Recording:
    """The transport underneath: what was sent, in which calls, and how it ended."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.late: list[bytes] = []  # written after the end: a transport drops these and warns
        self.ended: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        (self.late if self.closing else self.sent).append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 10

    def close(self) -> None:
        self.closing = True
        self.ended.append("close")

    def abort(self) -> None:
        self.closing = True
        self.ended.append("abort")

    def write_eof(self) -> None:
        self.ended.append("eof")

    def set_protocol(self, protocol: Any) -> None:
        self.ended.append("handed over")

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def joined() -> tuple[JoinedWrites, Recording]:
    under = Recording()
    return JoinedWrites(under, asyncio.get_running_loop()), under  # type: ignore[arg-type]


def test_writes_of_one_turn_are_sent_as_one() -> None:
    async def scenario() -> None:
        writes, under = await joined()
        writes.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        writes.writelines([b"{", memoryview(b"}")])
        assert under.sent == []
        assert writes.get_write_buffer_size() == 10 + 40
        await asyncio.sleep(0)
        assert under.sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        writes.write(b"next")
        await asyncio.sleep(0)
        assert under.sent[1:] == [b"next"]

    asyncio.run(scenario())


def test_once_an_answers_head_is_out_its_later_parts_go_at_once() -> None:
    async def scenario() -> None:
        writes, under = await joined()
        writes.write(b"head")
        await asyncio.sleep(0)
        writes.write(b"chunk 1")
        writes.write(b"chunk 2")
        assert under.sent == [b"head", b"chunk 1", b"chunk 2"]  # not held for the turn's end
        writes.answer_complete()
        writes.write(b"next head")
        writes.write(b"next body")
        assert under.sent[3:] == []  # the next answer is joined again
        writes.answer_complete()
        assert under.sent[3:] == [b"next headnext body"]
        await asyncio.sleep(0)
        assert under.sent[4:] == []

    asyncio.run(scenario())


def test_an_answer_begun_in_the_turn_another_completed_still_passes_its_parts() -> None:
    async def scenario() -> None:
        writes, under = await joined()
        writes.write(b"head 1")
        writes.answer_complete()
        writes.write(b"head 2")  # a pipelined request's answer, begun in the same turn
        await asyncio.sleep(0)
        writes.write(b"chunk")
        assert under.sent == [b"head 1", b"head 2", b"chunk"]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("end", "sent", "ended"),
    [
        ("close", [b"held"], ["close"]),
        ("write_eof", [b"held"], ["eof"]),
        ("set_protocol", [b"held"], ["handed over"]),
        ("abort", [], ["abort"]),  # an abort discards what is unsent, as the transport's own does
    ],
)
def test_ending_the_connection_sends_what_is_held_first(
    end: str, sent: list[bytes], ended: list[str]
) -> None:
    async def scenario() -> None:
        writes, under = await joined()
        writes.write(b"held")
        getattr(writes, end)(*([None] if end == "set_protocol" else []))
        assert (under.sent, under.ended) == (sent, ended)
        await asyncio.sleep(0)  # the end-of-turn send finds nothing left: nothing twice
        assert (under.sent, under.late) == (sent, [])

    asyncio.run(scenario())


def test_held_bytes_for_a_connection_closed_meanwhile_are_dropped() -> None:
    async def scenario() -> None:
        writes, under = await joined()
        writes.write(b"too late")
        under.closing = True  # the client hung up before the end of the turn
        await asyncio.sleep(0)
        assert (under.sent, under.late) == ([], [])
        assert writes.get_extra_info("peername") == "info:peername"
        assert writes.is_closing()

    asyncio.run(scenario())


@contextlib.contextmanager
def under_uvicorn(app: Any, http: type[GuardedProtocol] = JoinedWritesProtocol) -> Iterator[int]:
    """``app`` served as `keybroker serve` serves, in a thread; yields its port."""
    server, _ = serve_in_thread(app, http=http)
    try:
        yield server.config.port
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)  # type: ignore[attr-defined]


def read_until(sock: socket.socket, done: Any, seen: bytes = b"") -> bytes:
    """What arrives until ``done(seen)``; the socket's timeout fails a wait that is too long."""
    while not done(seen):
        seen += sock.recv(1 << 20)
    return seen


def test_under_uvicorn_a_chunk_is_not_held_for_the_next() -> None:
    told = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        """Two chunks, the second only once the client has read the first."""
        head = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.get_running_loop().run_in_executor(None, told.wait, 5)
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    with under_uvicorn(app) as port, socket.create_connection(("127.0.0.1", port), 5) as sock:
        for _ in range(2):  # and the connection is kept alive for a second request
            told.clear()
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            seen = read_until(sock, lambda seen: b"data: 1\n\n" in seen)
            assert seen.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"data: 2" not in seen
            told.set()
            seen = read_until(sock, lambda seen: seen.endswith(b"0\r\n\r\n"), seen)
            assert seen.count(b"data: 2\n\n") == 1


def test_under_uvicorn_a_complete_answer_is_not_held_for_the_apps_after_work() -> None:
    after = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        """Answers, then works on without yielding (as the proxy records usage) until told."""
        head = [(b"content-type", b"application/json"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": b"{}"})
        after.wait(10)  # blocks the loop: held bytes would only go out after it

    with under_uvicorn(app) as port:
        try:
            with socket.create_connection(("127.0.0.1", port), 3) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                # Times out (fails) if the answer waits for the app.
                seen = read_until(sock, lambda seen: seen.endswith(b"\r\n\r\n{}"))
                assert seen.startswith(b"HTTP/1.1 200 OK\r\n")
        finally:
            after.set()  # before the server is stopped: its loop is blocked until then


def test_under_uvicorn_send_now_sends_a_started_answers_parts_from_outside_the_task() -> None:
    states: list[tuple[str, bool]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        send_now = scope["extensions"][extension.NAME]["send"]
        assert send_now.serves(send)  # this very send, no wrapper between
        assert not send_now.serves(lambda message: send(message))
        states.append(("before the head", send_now.ready()))
        head = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        states.append(("after the head", send_now.ready()))
        done = asyncio.get_running_loop().create_future()

        def from_a_callback() -> None:  # as the upstream connection's data_received would
            send_now(b"data: 1\n\n")
            send_now(b"data: 2\n\n")
            done.set_result(None)

        asyncio.get_running_loop().call_soon(from_a_callback)
        await done
        await send({"type": "http.response.body", "body": b"data: 3\n\n", "more_body": False})
        states.append(("after the end", send_now.ready()))

    with under_uvicorn(app) as port, socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        seen = read_until(sock, lambda seen: seen.endswith(b"0\r\n\r\n"))
    assert seen.split(b"\r\n\r\n", 1)[1] == (
        b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n9\r\ndata: 3\n\n\r\n0\r\n\r\n"
    )
    assert states == [
        ("before the head", False),
        ("after the head", True),
        ("after the end", False),
    ]


def test_under_uvicorn_send_now_is_not_ready_while_the_client_is_not_reading() -> None:
    part = b"x" * 65536
    sent_at_once: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        send_now = scope["extensions"][extension.NAME]["send"]
        head = [(b"content-type", b"application/octet-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await asyncio.sleep(0)  # the head goes out at the end of its turn; then parts pass
        count = 0
        while send_now.ready() and count < 1000:  # 64 MiB: far beyond any socket buffer
            send_now(part)
            count += 1
        sent_at_once.append(count)
        # As the proxy does then: wait with send until the client takes more.
        await send({"type": "http.response.body", "body": b"end", "more_body": False})

    with under_uvicorn(app) as port, socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        seen = read_until(sock, lambda seen: seen.endswith(b"end\r\n0\r\n\r\n"))
    assert 0 < sent_at_once[0] < 1000  # flow control stopped it
    body = seen.split(b"\r\n\r\n", 1)[1]
    assert body == (b"10000\r\n" + part + b"\r\n") * sent_at_once[0] + b"3\r\nend\r\n0\r\n\r\n"


def test_serving_an_answer_leaves_no_reference_cycle_behind() -> None:
    # Objects in a cycle wait for the garbage collector, whose pauses are the one-connection
    # tail (bench/NOTES.md, eighth session): a request must be freed by reference counting.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        head = [(b"content-type", b"application/json"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": b"{}"})

    with under_uvicorn(app) as port:
        gc.collect()
        gc.disable()
        try:
            for _ in range(100):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    read_until(sock, lambda seen: seen.endswith(b"{}"))
            left = gc.collect()
        finally:
            gc.enable()
    assert left < 100  # with a cycle per request: 24 objects each


def test_the_self_test_passes_on_this_uvicorn_for_both_protocols() -> None:
    assert server_protocol.self_test(GuardedProtocol) is None
    assert server_protocol.self_test(JoinedWritesProtocol) is None
    assert server_protocol.choose(stock=False) is JoinedWritesProtocol
    assert server_protocol.choose(stock=True) is GuardedProtocol


def _send_that_waits(original: Any) -> Any:
    async def send(self: Any, message: Any) -> None:
        await asyncio.sleep(0)  # a release that added an await to send
        await original(self, message)

    return send


@pytest.mark.parametrize(
    ("target", "name", "replacement"),
    [
        (RequestResponseCycle, "send", _send_that_waits(RequestResponseCycle.send)),
        (FlowControl, "pause_writing", lambda self: None),  # write_paused never set
    ],
    ids=["send-awaits", "flow-control"],
)
def test_a_changed_uvicorn_internal_falls_back_to_the_stock_protocol_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: type,
    name: str,
    replacement: Any,
) -> None:
    monkeypatch.setattr(target, name, replacement)
    with caplog.at_level(logging.WARNING, logger="keybroker"):
        assert server_protocol.choose(stock=False) is GuardedProtocol
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "self-test" in warnings[0].getMessage()


def test_without_the_request_limits_serve_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if uvicorn stopped calling on_header: no field would be counted.
    monkeypatch.setattr(GuardedProtocol, "on_header", HttpToolsProtocol.on_header)
    with pytest.raises(RuntimeError, match="request limits"):
        server_protocol.choose(stock=True)


def ok_app() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        head = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": body})

    return app


def read_to_end(sock: socket.socket) -> bytes:
    seen = b""
    while chunk := sock.recv(1 << 20):
        seen += chunk
    return seen


def request_with(extra: bytes, body: bytes = b"") -> bytes:
    return (
        b"POST / HTTP/1.1\r\nhost: x\r\n"
        + extra
        + b"content-length: %d\r\n" % len(body)
        + b"connection: close\r\n\r\n"
        + body
    )


@pytest.mark.parametrize("http", [GuardedProtocol, JoinedWritesProtocol])
@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        (b"x-n: 1\r\n" * 97, False),  # 100 fields with host, length and connection
        (b"x-n: 1\r\n" * 98, True),
        (b"x-pad: " + b"p" * (65536 - 200) + b"\r\n", False),
        (b"x-pad: " + b"p" * 65536 + b"\r\n", True),
    ],
    ids=["100-fields", "101-fields", "under-64k", "over-64k"],
)
def test_request_heads_are_bounded_with_a_431_and_a_close(
    http: type[GuardedProtocol], extra: bytes, refused: bool
) -> None:
    body = b"b" * 200_000  # sent with the head: a body is not head
    with (
        under_uvicorn(ok_app(), http) as port,
        socket.create_connection(("127.0.0.1", port), 10) as sock,
    ):
        sock.sendall(request_with(extra, body))
        seen = read_to_end(sock)
    if refused:
        assert seen.startswith(b"HTTP/1.1 431 "), seen[:100]
        head, _, answer = seen.partition(b"\r\n\r\n")
        assert b"connection: close" in head
        assert json.loads(answer)["error"]["code"] == "request_header_fields_too_large"
    else:
        assert seen.startswith(b"HTTP/1.1 200 "), seen[:100]
        assert seen.endswith(body)


@pytest.mark.parametrize("http", [GuardedProtocol, JoinedWritesProtocol])
def test_a_head_that_trickles_in_times_out(
    http: type[GuardedProtocol], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GuardedProtocol, "header_timeout", 0.5)
    with under_uvicorn(ok_app(), http) as port:
        with socket.create_connection(("127.0.0.1", port), 5) as sock:
            started = time.monotonic()
            sock.sendall(b"GET / HTTP/1.1\r\n")
            for _ in range(3):  # a byte now and then does not reset the clock
                time.sleep(0.2)
                with contextlib.suppress(OSError):
                    sock.sendall(b"x")
            seen = read_to_end(sock)
            assert seen.startswith(b"HTTP/1.1 408 ")
            assert time.monotonic() - started < 3
        with socket.create_connection(("127.0.0.1", port), 5) as sock:
            assert read_to_end(sock) == b""  # a silent connection is closed too
        with socket.create_connection(("127.0.0.1", port), 5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            assert read_to_end(sock).startswith(b"HTTP/1.1 200 ")
