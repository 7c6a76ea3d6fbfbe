"""`keybroker serve` (a real worker process) against a hostile upstream and hostile clients.

Each misbehaving answer must end in a 502 in OpenAI's shape for the request it answered and
for no other; the worker's memory must stay bounded (its peak RSS is reset before each case
through /proc/PID/clear_refs and read back as VmHWM); and no answer may ever reach a request
it was not for: every answer names the request it was for (its tag).
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BROKER
from tests.helpers import grant_token, register, save_key
from tests.hostile import Hostile, gzip_bomb
from tests.live import LiveBroker, start_broker

MB = 1024 * 1024


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    server = Hostile().start()
    yield server
    server.stop()


def broker_for(tmp: Path, upstream: Hostile, **env: str) -> LiveBroker:
    return start_broker(
        tmp,
        {"KEYBROKER_UPSTREAM_URL": upstream.url, "KEYBROKER_PUBLIC_URL": BROKER, **env},
    )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, hostile: Hostile) -> Iterator[LiveBroker]:
    gzip_bomb()  # made before any case is timed
    server = broker_for(tmp_path_factory.mktemp("hostile"), hostile)
    yield server
    server.stop()


def token_for(broker: LiveBroker) -> str:
    with httpx.Client(base_url=broker.url, follow_redirects=True) as web:
        authn = register(web)  # type: ignore[arg-type]
        save_key(web, authn)  # type: ignore[arg-type]
        chosen = {"scopes": ["chat", "models"], "models": "", "budget_usd": "100"}
        chosen |= {"rpm": "10000", "days": "30"}
        token: str = grant_token(web, authn, choices=chosen)["access_token"]  # type: ignore[arg-type]
        return token


def status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


class PeakRss:
    """How far the process's resident memory rose above where it was when this began."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
        self.start = status_kb(pid, "VmRSS")

    def rise_mb(self) -> float:
        return (status_kb(self.pid, "VmHWM") - self.start) / 1024


def get(broker: LiveBroker, token: str, tag: str, case: str = "", **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", "x-stainless-tag": tag}
    if case:
        headers["x-stainless-hostile"] = case
    return httpx.get(f"{broker.url}/v1/models", headers=headers, timeout=60, **kw)


class Bystander:
    """Another grant's requests, one after another on a thread, while a case runs."""

    def __init__(self, broker: LiveBroker, token: str) -> None:
        self.broker, self.token = broker, token
        self.answers: list[tuple[str, int, str]] = []  # (tag sent, status, tag received)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                tag = f"bystander-{n}"
                response = client.get(
                    f"{self.broker.url}/v1/models",
                    headers={"authorization": f"Bearer {self.token}", "x-stainless-tag": tag},
                )
                got = response.json().get("tag", "") if response.status_code == 200 else ""
                self.answers.append((tag, response.status_code, got))

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def check(self) -> None:
        assert self.answers, "the bystander made no request"
        for tag, status, got in self.answers:
            assert status == 200, (tag, status)
            assert got == tag, f"{tag} got the answer for {got!r}"


@pytest.mark.parametrize("case", ["huge-headers", "many-headers", "gzip-bomb", "upgrade"])
def test_a_hostile_answer_is_a_502_for_its_request_only(
    broker: LiveBroker, hostile: Hostile, case: str
) -> None:
    victim, other = token_for(broker), token_for(broker)
    assert get(broker, victim, "warm").status_code == 200
    peak = PeakRss(broker.process.pid)
    with Bystander(broker, other) as bystander:
        response = get(broker, victim, f"victim-{case}", case)
        time.sleep(0.2)  # the bystander's requests go on after the case too
    assert response.status_code == 502, response.text[:300]
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_bad_answer"
    assert set(error) == {"message", "type", "param", "code"}
    assert peak.rise_mb() < 32, f"RSS rose {peak.rise_mb():.1f} MB"
    bystander.check()
    # The victim's grant works on, through a connection of its own.
    assert get(broker, victim, "after").json()["tag"] == "after"
    assert (case, f"victim-{case}") in hostile.requests


def test_an_unasked_second_answer_reaches_nobody(broker: LiveBroker) -> None:
    victim, other = token_for(broker), token_for(broker)
    with Bystander(broker, other) as bystander:
        for n in range(20):
            response = get(broker, victim, f"asked-{n}", "second-answer")
            assert response.status_code == 200
            assert response.json()["tag"] == f"asked-{n}"
    bystander.check()


def test_late_bytes_on_idle_pooled_connections_reach_nobody(
    broker: LiveBroker, hostile: Hostile
) -> None:
    tokens = [token_for(broker) for _ in range(4)]
    local = threading.local()
    clients: list[httpx.Client] = []

    def one(tag: str) -> tuple[str, int, str]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=30)
            clients.append(local.client)
        response = local.client.get(
            f"{broker.url}/v1/models",
            headers={"authorization": f"Bearer {tokens[hash(tag) % 4]}", "x-stainless-tag": tag},
        )
        got = response.json().get("tag", "") if response.status_code == 200 else ""
        return tag, response.status_code, got

    spoofed = 0
    try:
        spoofed = spoof_while_running(one, hostile)
    finally:
        for client in clients:
            client.close()
    assert spoofed > 0  # the forgeries did go out on idle connections


def spoof_while_running(one: Callable[[str], tuple[str, int, str]], hostile: Hostile) -> int:
    spoofed = 0
    for round_ in range(2):
        with concurrent.futures.ThreadPoolExecutor(32) as pool:  # 32 connections in the pool
            results = list(pool.map(one, [f"warm-{round_}-{i}" for i in range(64)]))
        # Four at a time now: the pool reuses its most recent connections, the others sit
        # idle; forged answers land on those while these requests run.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            running = pool.map(one, [f"r{round_}-{i}" for i in range(200)])
            time.sleep(1.5)
            spoofed += hostile.spoof_idle(idle_for=1.0)
            results += list(running)
        for tag, status, got in results:
            assert status == 200, (tag, status)
            assert got == tag, f"{tag} got the answer for {got!r}"
    return spoofed


def test_64_mb_of_request_headers_get_a_431_and_a_closed_connection(broker: LiveBroker) -> None:
    peak = PeakRss(broker.process.pid)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=30) as sock:

        def flood() -> None:
            line = b"x-filler: " + b"a" * 4086 + b"\r\n"  # 4 KiB a line
            try:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
                for _ in range(16 * 1024):  # 64 MiB
                    sock.sendall(line)
            except OSError:
                pass  # the broker hung up, as it should

        sender = threading.Thread(target=flood)
        sender.start()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        sender.join(60)
    assert received.startswith(b"HTTP/1.1 431 "), received[:200]
    assert b"connection: close" in received.lower()
    assert peak.rise_mb() < 16, f"RSS rose {peak.rise_mb():.1f} MB"


def test_a_request_over_the_connection_cap_waits_then_gets_a_503(tmp_path: Path) -> None:
    cap = 8
    upstream = Hostile(slow_seconds=2.5).start()
    server = broker_for(
        tmp_path,
        upstream,
        KEYBROKER_UPSTREAM_MAX_CONNECTIONS=str(cap),
        KEYBROKER_UPSTREAM_POOL_TIMEOUT="1",
    )
    try:
        token = token_for(server)
        before = upstream.most_open = upstream.open_now  # the key check's, if still open

        # One client, and so one connection, per request: 500 threads sharing one httpx pool
        # failed in the client itself under load ("Bad file descriptor"), not in the broker.
        def one(i: int) -> tuple[int, float, dict[str, Any]]:
            started = time.monotonic()
            with httpx.Client(timeout=60) as client:
                response = client.get(
                    f"{server.url}/v1/models",
                    headers={
                        "authorization": f"Bearer {token}",
                        "x-stainless-tag": f"slow-{i}",
                        "x-stainless-hostile": "slow",
                    },
                )
            return response.status_code, time.monotonic() - started, response.json()

        with concurrent.futures.ThreadPoolExecutor(500) as pool:
            results = list(pool.map(one, range(500)))
    finally:
        server.stop()
        upstream.stop()
    assert upstream.most_open - before <= cap
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) >= cap
    assert statuses.count(200) + statuses.count(503) == 500
    busy = [(took, body) for status, took, body in results if status == 503]
    assert busy
    for took, body in busy:
        assert took >= 1.0  # waited for the pool timeout first
        assert body["error"]["code"] == "upstream_busy"
        assert body["error"]["type"] == "server_error"
    slow = [tag for case, tag in upstream.requests if case == "slow"]
    assert len(slow) == statuses.count(200)  # a 503 never reached the upstream


def test_the_aiohttp_client_relays_and_refuses_as_the_proxy_needs(
    tmp_path: Path, hostile: Hostile
) -> None:
    # KEYBROKER_UPSTREAM_CLIENT=aiohttp swaps the client behind the same interface.
    server = broker_for(tmp_path, hostile, KEYBROKER_UPSTREAM_CLIENT="aiohttp")
    try:
        token = token_for(server)
        assert get(server, token, "plain").json()["tag"] == "plain"
        for case in ("upgrade", "many-headers"):
            response = get(server, token, case, case)
            assert response.status_code == 502, (case, response.text[:200])
            assert response.json()["error"]["code"] == "upstream_bad_answer"
        answered = get(server, token, "second", "second-answer")
        assert answered.json()["tag"] == "second"
        assert get(server, token, "next").json()["tag"] == "next"
    finally:
        server.stop()
