"""`keybroker serve --port N` as a newcomer runs it: no configuration at all."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Window
from tests.e2e.test_passkeys_browser import create_account, sign_in, sign_out
from tests.live import start_broker


def test_serve_on_any_port_with_no_configuration_accepts_passkeys(
    tmp_path: Path, window: Window
) -> None:
    # A random port, not the default 8000: the rpId and origin must come from the port served.
    live = start_broker(tmp_path, configured=False)
    try:
        assert f"serving http://localhost:{live.port} " in live.logs()
        assert (live.data_dir / ".keybroker" / "generated-secrets.env").is_file()
        create_account(window.page, live)
        [credential] = window.credentials()
        assert credential["rpId"] == "localhost"
        sign_out(window.page, live)
        sign_in(window.page, live)
    finally:
        live.stop()
