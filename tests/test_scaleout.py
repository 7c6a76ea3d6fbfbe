"""Two broker instances sharing one PostgreSQL and one Redis (the scale-out setup).

Real servers: the machine's PostgreSQL, and a Redis server of this test's own on a free port
(so it can be restarted mid-test without disturbing anything else). Required when CI=true.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlmodel import Session

from keybroker.crypto import tokens
from keybroker.models import UsageRecord
from tests.conftest import BROKER, fresh_postgres
from tests.helpers import grant_token, register, save_key
from tests.live import LiveBroker, start_broker
from tests.net import free_port, reachable, require_service
from tests.upstream import Upstream

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    require_service("Redis", "127.0.0.1", 6379)  # this machine's Redis: its binary is here
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed")
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@dataclass
class Cluster:
    a: LiveBroker
    b: LiveBroker
    database_url: str
    redis: RedisServer

    def token(self, **choices: Any) -> str:
        """A grant made through instance A."""
        with httpx.Client(base_url=self.a.url, follow_redirects=True) as web:
            authn = register(web)  # type: ignore[arg-type]
            save_key(web, authn)  # type: ignore[arg-type]
            chosen = {
                "scopes": ["chat", "models"],
                "models": "",
                "budget_usd": "100",
                "rpm": "10000",
                "days": "30",
                **choices,
            }
            return grant_token(web, authn, choices=chosen)["access_token"]  # type: ignore[arg-type]

    def usage(self, token: str) -> tuple[int, int, int, int]:
        engine = create_engine(self.database_url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with Session(engine) as db:
                row = db.execute(
                    select(
                        func.count(),
                        func.coalesce(func.sum(UsageRecord.input_tokens), 0),
                        func.coalesce(func.sum(UsageRecord.output_tokens), 0),
                        func.coalesce(func.sum(UsageRecord.cost_microusd), 0),
                    ).where(UsageRecord.grant_id == tokens.parse_token(token).grant_id)  # type: ignore[arg-type]
                ).one()
        finally:
            engine.dispose()
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])


@pytest.fixture
def cluster(tmp_path: Path, upstream: Upstream, redis_server: RedisServer) -> Iterator[Cluster]:
    with fresh_postgres() as database_url:
        env = {
            "KEYBROKER_DATABASE_URL": database_url,
            "KEYBROKER_REDIS_URL": redis_server.url,
            "KEYBROKER_UPSTREAM_URL": upstream.url,
            "KEYBROKER_PUBLIC_URL": BROKER,
            # One secret and ring for both instances, as a deployment would have.
            "KEYBROKER_SECRET_KEY": "s" * 48,
            "KEYBROKER_MASTER_KEYS": "k1:" + "QUFB" * 10 + "QUE=",
        }
        a = start_broker(tmp_path / "a", env)
        b = start_broker(tmp_path / "b", env)
        try:
            yield Cluster(a, b, database_url, redis_server)
        finally:
            a.stop()
            b.stop()


def call(broker: LiveBroker, token: str) -> httpx.Response:
    return httpx.post(
        f"{broker.url}/v1/chat/completions",
        json=CHAT,
        timeout=30,
        headers={"authorization": f"Bearer {token}"},
    )


def test_grant_made_on_one_works_on_the_other_and_revoke_reaches_it(cluster: Cluster) -> None:
    token = cluster.token()
    assert call(cluster.b, token).status_code == 200
    assert call(cluster.a, token).status_code == 200
    revoked = httpx.post(
        f"{cluster.a.url}/oauth/revoke", data={"token": token, "client_id": "http://127.0.0.1:5555"}
    )
    assert revoked.status_code == 200
    started = time.monotonic()
    while call(cluster.b, token).status_code != 401:
        assert time.monotonic() - started < 1.0, "revocation did not reach instance B in 1 s"
        time.sleep(0.02)


def test_rate_limit_holds_across_both_instances(cluster: Cluster) -> None:
    token = cluster.token(rpm="10")
    statuses = [call(cluster.a if i % 2 else cluster.b, token).status_code for i in range(10)]
    assert statuses == [200] * 10
    for instance in (cluster.a, cluster.b):
        eleventh = call(instance, token)
        assert eleventh.status_code == 429
        assert eleventh.json()["error"]["code"] == "rate_limit_exceeded"


def test_budget_accounting_is_exact_under_200_concurrent_requests(cluster: Cluster) -> None:
    token = cluster.token()
    with ThreadPoolExecutor(max_workers=40) as pool:
        statuses = list(
            pool.map(
                lambda i: call(cluster.a if i % 2 else cluster.b, token).status_code, range(200)
            )
        )
    assert statuses == [200] * 200
    deadline = time.monotonic() + 10
    while cluster.usage(token)[0] < 200:
        assert time.monotonic() < deadline, cluster.usage(token)
        time.sleep(0.1)
    count, inp, out, cost = cluster.usage(token)
    # The mock upstream reports 10 prompt and 7 completion tokens per request.
    assert (count, inp, out) == (200, 2000, 1400)
    assert cost == 200 * round(10 * 0.15 + 7 * 0.6)
    info = httpx.get(
        f"{cluster.b.url}/api/grant", headers={"authorization": f"Bearer {token}"}
    ).json()
    assert info["spent_this_month_usd"] == pytest.approx(cost / 1e6)


def test_redis_restart_fails_closed_and_loses_nothing(cluster: Cluster) -> None:
    token = cluster.token()
    answered_ok = sum(call(i, token).status_code == 200 for i in (cluster.a, cluster.b) * 3)
    assert answered_ok == 6
    cluster.redis.stop()
    while_down = [call(i, token) for i in (cluster.a, cluster.b) * 2]
    for response in while_down:
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "limits_unavailable"
        assert "Retry" in response.json()["error"]["message"]
    cluster.redis.start()
    deadline = time.monotonic() + 10
    recovered = 0
    while recovered < 4:
        assert time.monotonic() < deadline, "instances did not recover after Redis came back"
        for instance in (cluster.a, cluster.b):
            recovered += call(instance, token).status_code == 200
        time.sleep(0.05)
    answered_ok += recovered
    deadline = time.monotonic() + 10
    while cluster.usage(token)[0] < answered_ok:
        assert time.monotonic() < deadline, (cluster.usage(token), answered_ok)
        time.sleep(0.1)
    assert cluster.usage(token)[0] == answered_ok  # every answered request is recorded


def test_twenty_parallel_requests_on_two_instances_against_a_budget_for_three(
    cluster: Cluster,
) -> None:
    # As tests/proxy/test_budgets.py in one process: each request reserves $0.003 and really
    # costs $0.002942 of a $0.01 budget, so three fit; the instances share one count.
    token = cluster.token(budget_usd="0.01")
    body = {**CHAT, "messages": [{"role": "user", "content": "sleep:1500 tokens:4900"}]}
    body["max_tokens"] = 5000
    clients = [
        httpx.Client(base_url=(cluster.a if i % 2 else cluster.b).url, timeout=30)
        for i in range(20)
    ]
    start = threading.Barrier(20)

    def one(client: httpx.Client) -> httpx.Response:
        start.wait()
        return client.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {token}"}
        )

    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(one, clients))
    finally:
        for client in clients:
            client.close()
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 3, statuses
    refused = [a.json()["error"]["code"] for a in answers if a.status_code != 200]
    assert set(refused) == {"insufficient_quota"}
    deadline = time.monotonic() + 10
    while cluster.usage(token)[0] < 3:
        assert time.monotonic() < deadline, cluster.usage(token)
        time.sleep(0.1)
    count, _, _, cost = cluster.usage(token)
    assert count == 3
    assert cost == 3 * round(10 * 0.15 + 4900 * 0.6 + 0.5) <= 10_000
    for instance in (cluster.a, cluster.b):
        info = httpx.get(
            f"{instance.url}/api/grant", headers={"authorization": f"Bearer {token}"}
        ).json()
        assert info["spent_this_month_usd"] == pytest.approx(cost / 1e6)
        assert info["reserved_usd"] == 0


def test_a_rate_of_45_a_minute_holds_across_both_instances(cluster: Cluster) -> None:
    # 60,000 / 45 ms is not a whole number: this once made every request a 503.
    token = cluster.token(rpm="45")
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(
            pool.map(lambda i: call(cluster.a if i % 2 else cluster.b, token), range(60))
        )
    elapsed = time.monotonic() - began
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 429}, statuses
    # The burst of 45, and one more for every 60/45 s the requests took to send.
    assert 45 <= statuses.count(200) <= 45 + math.ceil(elapsed * 45 / 60), (statuses, elapsed)
    refused = [a for a in answers if a.status_code == 429]
    assert {a.json()["error"]["code"] for a in refused} == {"rate_limit_exceeded"}
    assert {a.headers["retry-after"] for a in refused} <= {"1", "2"}
