"""The authorization-code flow with PKCE and a loopback redirect (RFC 8252 §7.3, RFC 7636).

A one-shot HTTP listener on 127.0.0.1 and a port the system picks receives the redirect; the
registered redirect URI is ``http://127.0.0.1/callback``, which keybroker matches on any port.
Any local process can connect to that port, so each connection gets its own thread and a read
timeout: a stalled or idle connection cannot hold back the browser's real callback.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from keybroker_client.errors import KeybrokerError
from keybroker_client.oauth import Ask, access, expires_in, oauth_error, post_form

DONE_PAGE = (
    b"<!doctype html><meta charset=utf-8><title>keybroker</title>"
    b"<p>Done. You can close this window and return to the app.</p>"
)
CONNECTION_TIMEOUT = 10.0  # seconds a connection may take to send its request


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class Listener:
    """Waits for the one redirect that carries our ``state``; other requests get a 404."""

    def __init__(self, state: str) -> None:
        self.params: dict[str, str] | None = None
        self.arrived = threading.Event()
        taken = threading.Lock()  # connections run in parallel: only one answer is kept
        listener = self

        class Handler(BaseHTTPRequestHandler):
            timeout = CONNECTION_TIMEOUT  # socket timeout for reading each connection

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if (
                    parts.path != "/callback"
                    or query.get("state") != state
                    or not taken.acquire(blocking=False)
                ):
                    self.send_error(404)
                    return
                listener.params = query
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(DONE_PAGE)))
                self.end_headers()
                self.wfile.write(DONE_PAGE)
                listener.arrived.set()

            def log_message(self, format: str, *args: object) -> None:
                pass  # the query carries the code: never printed

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.redirect_uri = f"http://127.0.0.1:{self.server.server_port}/callback"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, timeout: float) -> dict[str, str] | None:
        self.arrived.wait(timeout)
        return self.params

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def authorize_url(ask: Ask, redirect_uri: str, state: str, challenge: str) -> str:
    params = {
        "response_type": "code",
        **ask.params(),
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return f"{ask.broker}/authorize?{urlencode(params)}"


def run(
    http: httpx.Client,
    ask: Ask,
    *,
    timeout: float,
    open_browser: Callable[[str], bool],
    show: Callable[[str], None],
) -> tuple[dict[str, str], float | None] | None:
    """The access and its lifetime; None if no browser opened (the caller may fall back)."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    listener = Listener(state)
    try:
        url = authorize_url(ask, listener.redirect_uri, state, challenge)
        if not open_browser(url):
            return None
        show(f"Continue in your browser. If it did not open, open:\n{url}")
        params = listener.wait(timeout)
    finally:
        listener.close()
    if params is None:
        raise KeybrokerError("timeout", f"No answer within {timeout:g} seconds.")
    # RFC 9207 §2.4: keybroker advertises authorization_response_iss_parameter_supported, so
    # an answer without iss is refused like one naming another server (a mix-up attack).
    if "iss" not in params:
        raise KeybrokerError("invalid_response", "The answer does not name its issuer (iss).")
    if params["iss"] != ask.broker:
        raise KeybrokerError("invalid_response", "The answer came from another issuer.")
    if "error" in params:
        raise oauth_error("the authorization response", 400, params)
    code = params.get("code")
    if not code:
        raise KeybrokerError("invalid_response", "The authorization response has no code.")
    token_url = f"{ask.broker}/oauth/token"
    status, body = post_form(
        http,
        token_url,
        {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": ask.client_id,
            "redirect_uri": listener.redirect_uri,
        },
    )
    if status != 200:
        raise oauth_error(token_url, status, body)
    return access(body), expires_in(body)
