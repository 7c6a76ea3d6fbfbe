from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from keybroker.app import create_app
from keybroker.settings import Settings, load_settings
from tests.live import Live
from tests.upstream import Upstream, serve_in_thread, start_upstream, stop_upstream

BROKER = "http://localhost:8000"


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = start_upstream()
    yield server
    stop_upstream(server)


@pytest.fixture
def settings(tmp_path: Path, upstream: Upstream) -> Settings:
    return load_settings(
        {
            "KEYBROKER_DATA_DIR": str(tmp_path / "data"),
            "KEYBROKER_PUBLIC_URL": BROKER,
            "KEYBROKER_UPSTREAM_URL": upstream.url,
            "KEYBROKER_VALIDATION_TIMEOUT": "1",
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
    settings = load_settings(
        {
            "KEYBROKER_DATA_DIR": str(data),
            "KEYBROKER_PUBLIC_URL": BROKER,
            "KEYBROKER_UPSTREAM_URL": upstream.url,
            "KEYBROKER_UPSTREAM_TIMEOUT": "2",
        },
        env_file=None,
    )
    app = create_app(settings)
    server, url = serve_in_thread(app, lifespan="on")
    live = Live(url, app, upstream)
    yield live
    live.close()
    server.should_exit = True
    server.thread.join(timeout=10)  # type: ignore[attr-defined]
