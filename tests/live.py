"""Real servers on loopback ports for the browser and SDK tests: the broker under uvicorn in a
subprocess (so its logs land in a file the leak tests can read)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.net import free_port


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
    tmp: Path, extra_env: dict[str, str] | None = None, port: int | None = None
) -> LiveBroker:
    port = port or free_port()
    url = f"http://localhost:{port}"
    data_dir = tmp / f"broker-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")}
    env.update({"KEYBROKER_PUBLIC_URL": url, "KEYBROKER_DATA_DIR": str(data_dir)})
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
