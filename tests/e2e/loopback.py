"""A desktop or command-line app as the browser tests see it: registered with `keybroker clients
add`, receiving its authorization response on a loopback port of its choosing (RFC 8252)."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.live import LiveBroker

PAGE = b"You can close this window and return to the terminal."


def register_app(broker: LiveBroker, name: str, *options: str) -> str:
    """Register an app with the broker's own CLI; returns its client_id. By default a loopback
    app; ``options`` replaces that (e.g. ``--device``)."""
    added = subprocess.run(
        [
            sys.executable,
            "-m",
            "keybroker",
            "clients",
            "add",
            "--name",
            name,
            *(options or ("--redirect-uri", "http://127.0.0.1/callback")),
        ],
        env=broker.env,
        cwd=broker.data_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    return added.stdout.strip()


class Callback:
    """One redirect received on 127.0.0.1:<free port>/callback."""

    def __init__(self) -> None:
        received: dict[str, list[str]] = {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                received.update(parse_qs(urlsplit(self.path).query))
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.end_headers()
                self.wfile.write(PAGE)

            def log_message(self, *args: object) -> None:
                pass

        self.params = received
        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self.redirect_uri = f"http://127.0.0.1:{self._server.server_port}/callback"
        threading.Thread(target=self._server.handle_request, daemon=True).start()

    def close(self) -> None:
        self._server.server_close()
