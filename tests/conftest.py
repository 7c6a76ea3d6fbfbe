from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from keybroker.app import create_app
from keybroker.server_protocol import choose
from keybroker.settings import Settings, load_settings
from tests.live import Live
from tests.net import require_service
from tests.upstream import Upstream, serve_in_thread, start_upstream, stop_upstream

BROKER = "http://localhost:8000"


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = start_upstream()
    yield server
    stop_upstream(server)


POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/15"


def database_backend() -> str:
    """KEYBROKER_TEST_DB=postgres runs the database tests against PostgreSQL (scripts/test
    does a second pass that way); the default is the embedded SQLite."""
    return os.environ.get("KEYBROKER_TEST_DB", "sqlite")


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test or module, dropped afterwards."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"kb_test_{secrets.token_hex(6)}"
    admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def test_database(tmp_path: Path) -> Iterator[str]:
    if database_backend() == "postgres":
        with fresh_postgres() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'keybroker.db'}"


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    with test_database(tmp_path) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, upstream: Upstream, database_url: str) -> Settings:
    return load_settings(
        {
            "KEYBROKER_DATABASE_URL": database_url,
            "KEYBROKER_DATA_DIR": str(tmp_path / "data"),
            "KEYBROKER_PUBLIC_URL": BROKER,
            "KEYBROKER_UPSTREAM_URL": upstream.url,
            "KEYBROKER_VALIDATION_TIMEOUT": "1",
            "KEYBROKER_ABUSE_LIMIT_SCALE": "100",  # tests make many accounts from one IP
        },
        env_file=None,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url=BROKER) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def live(  # an in-process broker (its database readable here) on a loopback port
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[Live]:
    data: Path = tmp_path_factory.mktemp("live")
    with test_database(data) as url:
        yield from _live(data, url, upstream)


def _live(data: Path, database_url: str, upstream: Upstream) -> Iterator[Live]:
    settings = load_settings(
        {
            "KEYBROKER_DATABASE_URL": database_url,
            "KEYBROKER_DATA_DIR": str(data),
            "KEYBROKER_PUBLIC_URL": BROKER,
            "KEYBROKER_UPSTREAM_URL": upstream.url,
            "KEYBROKER_UPSTREAM_TIMEOUT": "2",
            "KEYBROKER_ABUSE_LIMIT_SCALE": "100",
        },
        env_file=None,
    )
    app = create_app(settings)
    # The protocol `serve` would choose (the stock one when KEYBROKER_SERVER_PROTOCOL=stock).
    protocol = choose(stock=os.environ.get("KEYBROKER_SERVER_PROTOCOL") == "stock")
    server, url = serve_in_thread(app, lifespan="on", http=protocol)
    live = Live(url, app, upstream)
    yield live
    live.close()
    server.should_exit = True
    server.thread.join(timeout=10)  # type: ignore[attr-defined]
