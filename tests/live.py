"""Real servers on loopback ports: ``LiveBroker`` runs the broker in a subprocess (so its logs
land in a file the leak tests read); ``Live`` runs it in this process under uvicorn (so tests
can read its database and caches)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import openai
from sqlalchemy import select
from sqlmodel import Session

from tests.net import free_port

if TYPE_CHECKING:
    from keybroker.app import KeybrokerApp
    from keybroker.context import Context
    from keybroker.models import UsageRecord
    from tests.upstream import Upstream


@dataclass
class LiveBroker:
    url: str
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_until_up(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server did not start:\n{log_path.read_text()}")


def start_broker(
    tmp: Path,
    extra_env: dict[str, str] | None = None,
    port: int | None = None,
    *,
    configured: bool = True,
) -> LiveBroker:
    """``keybroker serve`` on ``port`` in its own directory; with ``configured=False`` it gets
    no KEYBROKER_* setting at all, as a newcomer's first run (data in ``./.keybroker``)."""
    port = port or free_port()
    url = f"http://localhost:{port}"
    data_dir = tmp / f"broker-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    # The server path CI chose (KEYBROKER_SERVER_PROTOCOL) holds for every broker started.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KEYBROKER_") or k == "KEYBROKER_SERVER_PROTOCOL"
    }
    if configured:
        env.update(
            {
                "KEYBROKER_PUBLIC_URL": url,
                "KEYBROKER_DATA_DIR": str(data_dir),
                "KEYBROKER_ABUSE_LIMIT_SCALE": "100",
            }
        )
    env.update(extra_env or {})
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keybroker",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=data_dir,
    )
    log.close()
    wait_until_up(f"{url}/healthz", process, log_path)
    return LiveBroker(url, port, data_dir, log_path, process, env)


T = TypeVar("T")


@dataclass
class Live:
    url: str
    app: KeybrokerApp
    upstream: Upstream
    clients: list[httpx.Client | openai.OpenAI] = field(default_factory=list)

    @property
    def ctx(self) -> Context:
        ctx: Context = self.app.state.kb
        return ctx

    def owner(self) -> tuple[httpx.Client, Any]:
        """A new signed-in owner with a saved key: their browser session and authenticator."""
        from tests.helpers import register, save_key

        web = httpx.Client(base_url=self.url, follow_redirects=True)
        self.clients.append(web)
        authn = register(web)  # type: ignore[arg-type]
        save_key(web, authn)  # type: ignore[arg-type]
        return web, authn

    def grant_for(
        self, web: httpx.Client, authn: Any, client_id: str | None = None, **choices: Any
    ) -> str:
        from tests.helpers import APP, grant_token

        chosen = {
            "scopes": ["chat", "models"],
            "models": "",
            "budget_usd": "5",
            "rpm": "600",
            "days": "30",
            **choices,
        }
        response = grant_token(
            web,
            authn,
            choices=chosen,  # type: ignore[arg-type]
            client_id=client_id or APP,
        )
        token: str = response["access_token"]
        return token

    def grant(self, **choices: Any) -> str:
        """A fresh owner and a token granted to the test app through the popup flow."""
        web, authn = self.owner()
        return self.grant_for(web, authn, **choices)

    def close(self) -> None:
        for web in self.clients:
            web.close()

    def client(self, token: str, **options: Any) -> openai.OpenAI:
        sdk = openai.OpenAI(api_key=token, base_url=f"{self.url}/v1", max_retries=0, **options)
        self.clients.append(sdk)
        return sdk

    def usage(self, grant_id: str) -> list[UsageRecord]:
        from keybroker.models import UsageRecord

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
