"""A broker under uvicorn in this process (so tests can read its database), the mock
upstream on another loopback port, and helpers that grant tokens through the real flow."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
from sqlalchemy import select
from sqlmodel import Session

from keybroker.app import KeybrokerApp, create_app
from keybroker.context import Context
from keybroker.models import UsageRecord
from keybroker.settings import load_settings
from tests.conftest import BROKER
from tests.helpers import grant_token, register, save_key
from tests.upstream import Upstream, serve_in_thread

T = TypeVar("T")


@dataclass
class Live:
    url: str
    app: KeybrokerApp
    upstream: Upstream

    @property
    def ctx(self) -> Context:
        ctx: Context = self.app.state.kb
        return ctx

    def grant(self, **choices: Any) -> str:
        """A fresh owner and a token granted to the test app through the popup flow."""
        with httpx.Client(base_url=self.url, follow_redirects=True) as web:
            authn = register(web)  # type: ignore[arg-type]
            save_key(web)  # type: ignore[arg-type]
            chosen = {
                "scopes": ["chat", "models"],
                "models": "",
                "budget_usd": "5",
                "rpm": "600",
                "days": "30",
                **choices,
            }
            token: str = grant_token(web, authn, choices=chosen)["access_token"]  # type: ignore[arg-type]
            return token

    def client(self, token: str, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(api_key=token, base_url=f"{self.url}/v1", max_retries=0, **options)

    def usage(self, grant_id: str) -> list[UsageRecord]:
        with Session(self.ctx.engine) as db:
            return list(
                db.execute(
                    select(UsageRecord)
                    .where(UsageRecord.grant_id == grant_id)
                    .order_by(UsageRecord.id)
                ).scalars()
            )  # type: ignore[arg-type]


def wait_for(check: Callable[[], T], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Live]:
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
    yield Live(url, app, upstream)
    server.should_exit = True
    server.thread.join(timeout=10)  # type: ignore[attr-defined]
