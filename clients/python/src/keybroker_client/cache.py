"""An optional token cache: one JSON file in the user's config directory, mode 0600.

A cached token is used while it has not expired and the broker still knows it
(``GET /api/grant``); a revoked one is dropped and the flow runs again.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FILE_NAME = "tokens.json"


def config_dir() -> Path:
    """Where this user's settings belong on this system."""
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Application Support")
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "keybroker-client"


def default_path() -> Path:
    return config_dir() / FILE_NAME


def key(broker: str, client_id: str, scopes: Sequence[str]) -> str:
    return " ".join([broker, client_id, *sorted(scopes)])


class TokenCache:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Written whole to a file that is 0600 from its first byte, then moved into place.
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".tokens-")
        try:
            os.chmod(temporary, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, name: str) -> dict[str, str] | None:
        entry = self._read().get(name)
        if not isinstance(entry, dict):
            return None
        api_key, base_url = entry.get("api_key"), entry.get("base_url")
        expires_at = entry.get("expires_at")
        if not isinstance(api_key, str) or not isinstance(base_url, str):
            return None
        if isinstance(expires_at, int | float) and expires_at <= time.time():
            self.drop(api_key)
            return None
        return {"api_key": api_key, "base_url": base_url}

    def put(self, name: str, access: dict[str, str], lifetime: float | None) -> None:
        data = self._read()
        entry: dict[str, Any] = dict(access)
        if lifetime is not None:
            entry["expires_at"] = time.time() + lifetime
        data[name] = entry
        self._write(data)

    def tokens_for(self, broker: str, client_id: str) -> list[str]:
        prefix = f"{broker} {client_id} "
        return [
            entry["api_key"]
            for name, entry in self._read().items()
            if (name + " ").startswith(prefix) and isinstance(entry, dict) and "api_key" in entry
        ]

    def drop(self, api_key: str) -> None:
        data = self._read()
        kept = {
            k: v
            for k, v in data.items()
            if not (isinstance(v, dict) and v.get("api_key") == api_key)
        }
        if kept != data:
            self._write(kept)
