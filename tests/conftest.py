from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from keybroker.app import create_app
from keybroker.settings import Settings, load_settings

BROKER = "http://localhost:8000"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip with a reason when a server is missing, except in CI, where it must be there."""
    if reachable(host, port):
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} at {host}:{port} is required when CI=true but is not reachable")
    pytest.skip(f"{name} is not reachable at {host}:{port}")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        {"KEYBROKER_DATA_DIR": str(tmp_path / "data"), "KEYBROKER_PUBLIC_URL": BROKER},
        env_file=None,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url=BROKER) as test_client:
        yield test_client
