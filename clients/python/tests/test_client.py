"""keybroker-client against a fake broker served in-process (no broker package needed)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

import keybroker_client
from keybroker_client import KeybrokerError, cli, device, loopback, request_openai_api, revoke
from keybroker_client.loopback import CONNECTION_TIMEOUT, Listener

CLIENT = "kbc_test"


class FakeBroker:
    """Answers as keybroker does; ``script`` is the device flow's poll answers, in order."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.revoked: set[str] = set()
        self.codes: dict[str, str] = {}  # code -> code_challenge
        self.deny = False
        self.issued = 0
        broker = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(status)
                for name, value in (headers or {"content-type": "application/json"}).items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                broker.seen.append(("GET", parts.path, query))
                if parts.path == "/authorize":
                    redirect = query["redirect_uri"]
                    if broker.deny:
                        answer = {"error": "access_denied", "state": query["state"]}
                    else:
                        code = f"code{len(broker.codes)}"
                        broker.codes[code] = query["code_challenge"]
                        answer = {"code": code, "state": query["state"]}
                    answer["iss"] = broker.url
                    self._send(302, b"", {"location": f"{redirect}?{urlencode(answer)}"})
                elif parts.path == "/api/grant":
                    token = self.headers.get("authorization", "").removeprefix("Bearer ")
                    self._send(401 if token in broker.revoked else 200, {"ok": True})
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                broker.seen.append(("POST", self.path, form))
                if self.path == "/oauth/device_authorization":
                    if form.get("client_id") != CLIENT:
                        self._send(401, {"error": "invalid_client"})
                        return
                    self._send(
                        200,
                        {
                            "device_code": "dev-code",
                            "user_code": "BCDF-GHJK",
                            "verification_uri": f"{broker.url}/device",
                            "verification_uri_complete": f"{broker.url}/device?user_code=BCDF-GHJK",
                            "expires_in": 600,
                            "interval": 0,
                        },
                    )
                elif self.path == "/oauth/token":
                    self._token(form)
                elif self.path == "/oauth/revoke":
                    broker.revoked.add(form["token"])
                    self._send(200, {})
                else:
                    self._send(404, {"error": "not_found"})

            def _token(self, form: dict[str, str]) -> None:
                if form["grant_type"] == device.GRANT_TYPE:
                    answer = broker.script.pop(0) if broker.script else "token"
                    if answer != "token":
                        self._send(400, {"error": answer})
                        return
                else:
                    challenge = broker.codes.pop(form["code"], None)
                    digest = hashlib.sha256(form["code_verifier"].encode()).digest()
                    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                    if challenge != expected or not form["redirect_uri"].startswith(
                        "http://127.0.0.1:"
                    ):
                        self._send(400, {"error": "invalid_grant"})
                        return
                broker.issued += 1
                self._send(
                    200,
                    {
                        "access_token": f"sk-kb-token{broker.issued}",
                        "token_type": "Bearer",
                        "base_url": f"{broker.url}/v1",
                        "scope": "chat models",
                        "expires_in": 3600,
                    },
                )

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posts(self, path: str) -> list[dict[str, str]]:
        return [form for method, p, form in self.seen if method == "POST" and p == path]


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    fake = FakeBroker()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The device flow's waits, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(device, "sleep", waits.append)
    return waits


def browser_that_follows_redirects(url: str) -> bool:
    """A stand-in for the person's browser: the consent screen answers at once."""
    httpx.get(url, follow_redirects=True, timeout=10)
    return True


def test_device_flow_polls_as_told(broker: FakeBroker, slept: list[float]) -> None:
    broker.script = ["authorization_pending", "slow_down", "authorization_pending"]
    shown: list[str] = []
    access = request_openai_api(
        broker.url,
        CLIENT,
        scopes=["chat"],
        models=["gpt-4o-mini", "gpt-4o"],
        budget_usd=2.5,
        flow="device",
        show=shown.append,
    )
    assert access == {"api_key": "sk-kb-token1", "base_url": f"{broker.url}/v1"}
    assert "BCDF-GHJK" in shown[0]
    assert f"{broker.url}/device" in shown[0]
    # It waits the interval before each poll, 5 s more after slow_down (RFC 8628 §3.5).
    assert slept == [0, 0, 5, 5]
    started = broker.posts("/oauth/device_authorization")[0]
    assert started == {
        "client_id": CLIENT,
        "scope": "chat",
        "models": "gpt-4o-mini gpt-4o",
        "budget": "2.5",
    }
    polls = broker.posts("/oauth/token")
    assert len(polls) == 4
    assert all(p["device_code"] == "dev-code" and p["client_id"] == CLIENT for p in polls)


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ("access_denied", "access_denied"),
        ("expired_token", "expired"),
        ("invalid_grant", "refused"),
    ],
)
def test_device_flow_errors_have_codes(
    broker: FakeBroker, slept: list[float], answer: str, code: str
) -> None:
    broker.script = ["authorization_pending", answer]
    with pytest.raises(KeybrokerError) as info:
        request_openai_api(broker.url, CLIENT, flow="device", show=lambda _: None)
    assert info.value.code == code


def test_device_flow_gives_up_at_the_timeout_or_expiry(
    broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    monkeypatch.setattr(device, "clock", lambda: now[0])
    monkeypatch.setattr(device, "sleep", lambda s: now.__setitem__(0, now[0] + 30))
    broker.script = ["authorization_pending"] * 100
    with pytest.raises(KeybrokerError) as info:
        request_openai_api(broker.url, CLIENT, flow="device", timeout=100, show=lambda _: None)
    assert info.value.code == "timeout"
    now[0] = 0.0
    with pytest.raises(KeybrokerError) as expired:
        request_openai_api(broker.url, CLIENT, flow="device", timeout=10_000, show=lambda _: None)
    assert expired.value.code == "expired"


def test_unknown_client_is_refused(broker: FakeBroker, slept: list[float]) -> None:
    with pytest.raises(KeybrokerError) as info:
        request_openai_api(broker.url, "kbc_other", flow="device", show=lambda _: None)
    assert info.value.code == "refused"
    assert "invalid_client" in str(info.value)


def test_unreachable_and_garbage_answers(slept: list[float]) -> None:
    with pytest.raises(KeybrokerError) as info:
        request_openai_api("http://127.0.0.1:9", CLIENT, flow="device", show=lambda _: None)
    assert info.value.code == "unreachable"

    def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>not json</html>")

    with pytest.raises(KeybrokerError) as bad:
        request_openai_api(
            "http://broker.test",
            CLIENT,
            flow="device",
            show=lambda _: None,
            http=httpx.Client(transport=httpx.MockTransport(garbage)),
        )
    assert bad.value.code == "invalid_response"

    def no_token(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"token_type": "Bearer"})
        return httpx.Response(
            200,
            json={
                "device_code": "d",
                "user_code": "BCDF-GHJK",
                "verification_uri": "http://broker.test/device",
                "expires_in": 600,
                "interval": 0,
            },
        )

    with pytest.raises(KeybrokerError) as lacking:
        request_openai_api(
            "http://broker.test",
            CLIENT,
            flow="device",
            show=lambda _: None,
            http=httpx.Client(transport=httpx.MockTransport(no_token)),
        )
    assert lacking.value.code == "invalid_response"


def test_loopback_flow_with_pkce(broker: FakeBroker) -> None:
    access = request_openai_api(
        broker.url, CLIENT, open_browser=browser_that_follows_redirects, show=lambda _: None
    )
    assert access["api_key"] == "sk-kb-token1"
    authorize = next(q for m, p, q in broker.seen if p == "/authorize")
    assert authorize["response_type"] == "code"
    assert authorize["code_challenge_method"] == "S256"
    assert authorize["client_id"] == CLIENT
    assert authorize["redirect_uri"].startswith("http://127.0.0.1:")
    assert authorize["redirect_uri"].endswith("/callback")
    assert not broker.posts("/oauth/device_authorization")


def test_loopback_deny_and_timeout(broker: FakeBroker) -> None:
    broker.deny = True
    with pytest.raises(KeybrokerError) as info:
        request_openai_api(
            broker.url, CLIENT, open_browser=browser_that_follows_redirects, show=lambda _: None
        )
    assert info.value.code == "access_denied"
    with pytest.raises(KeybrokerError) as late:
        request_openai_api(
            broker.url, CLIENT, open_browser=lambda url: True, timeout=0.2, show=lambda _: None
        )
    assert late.value.code == "timeout"
    with pytest.raises(KeybrokerError) as closed:
        request_openai_api(
            broker.url, CLIENT, flow="loopback", open_browser=lambda url: False, show=print
        )
    assert closed.value.code == "no_browser"


def test_loopback_ignores_a_wrong_state_and_another_issuer(broker: FakeBroker) -> None:
    def forger(url: str) -> bool:
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        redirect = query["redirect_uri"]
        # A local page guessing the port: wrong state, ignored (404), the flow still waits.
        assert httpx.get(f"{redirect}?code=forged&state=wrong").status_code == 404
        # The right state but another issuer (RFC 9207 mix-up): refused.
        httpx.get(
            f"{redirect}?{urlencode({'code': 'x', 'state': query['state'], 'iss': 'http://evil'})}"
        )
        return True

    with pytest.raises(KeybrokerError) as info:
        request_openai_api(broker.url, CLIENT, open_browser=forger, show=lambda _: None)
    assert info.value.code == "invalid_response"
    assert not broker.posts("/oauth/token")


def test_auto_uses_the_device_flow_without_a_browser(
    broker: FakeBroker, slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSH_CONNECTION", "203.0.113.1 5000 192.0.2.1 22")
    monkeypatch.setattr(sys, "platform", "linux")
    assert not keybroker_client.browser_available()
    access = request_openai_api(broker.url, CLIENT, show=lambda _: None)
    assert access["api_key"] == "sk-kb-token1"
    assert broker.posts("/oauth/device_authorization")
    # A browser that fails to open falls back to the device flow too.
    fallback = request_openai_api(broker.url, CLIENT, open_browser=lambda url: False, show=print)
    assert fallback["api_key"] == "sk-kb-token2"


def test_cache_is_private_reused_and_revoked(
    broker: FakeBroker, slept: list[float], tmp_path: Path
) -> None:
    path = tmp_path / "config" / "keybroker-client" / "tokens.json"
    first = request_openai_api(broker.url, CLIENT, flow="device", cache=path, show=lambda _: None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = request_openai_api(broker.url, CLIENT, flow="device", cache=path, show=lambda _: None)
    assert again == first
    assert len(broker.posts("/oauth/device_authorization")) == 1  # no second flow
    # Other scopes are another entry.
    other = request_openai_api(
        broker.url, CLIENT, scopes=["chat"], flow="device", cache=path, show=lambda _: None
    )
    assert other != first
    assert revoke(broker.url, CLIENT, cache=path) == 2
    assert broker.revoked == {first["api_key"], other["api_key"]}
    assert json.loads(path.read_text()) == {}
    assert revoke(broker.url, CLIENT, cache=path) == 0


def test_a_token_revoked_elsewhere_is_not_reused(
    broker: FakeBroker, slept: list[float], tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    first = request_openai_api(broker.url, CLIENT, flow="device", cache=path, show=lambda _: None)
    broker.revoked.add(first["api_key"])  # the owner revoked it in settings
    second = request_openai_api(broker.url, CLIENT, flow="device", cache=path, show=lambda _: None)
    assert second != first
    assert first["api_key"] not in path.read_text()


def test_default_cache_lives_in_the_config_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from keybroker_client import cache

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cache.default_path() == tmp_path / "keybroker-client" / "tokens.json"


def test_cli_prints_variables_for_a_shell(
    broker: FakeBroker,
    slept: list[float],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    assert cli.main([broker.url, "--client-id", CLIENT, "--device", "--cache"]) == 0
    out, err = capsys.readouterr()
    assert out == f"OPENAI_API_KEY=sk-kb-token1 OPENAI_BASE_URL={broker.url}/v1\n"
    assert "BCDF-GHJK" in err
    assert "sk-kb-" not in err
    assert cli.main([broker.url, "--client-id", CLIENT, "--revoke"]) == 0
    assert broker.revoked == {"sk-kb-token1"}
    broker.script = ["access_denied"]
    assert cli.main([broker.url, "--client-id", CLIENT, "--device"]) == 1
    assert "access_denied" in capsys.readouterr().err


def test_it_does_not_need_the_broker() -> None:
    # The package stands alone: CI installs it into a fresh venv without the broker.
    assert "keybroker" not in sys.modules
    import importlib.metadata

    requires = importlib.metadata.requires("keybroker-client") or []
    assert [r for r in requires if "extra ==" not in r] == ["httpx>=0.27"]


def test_loopback_refuses_an_answer_without_iss(broker: FakeBroker) -> None:
    # RFC 9207 §2.4: the broker advertises authorization_response_iss_parameter_supported, so
    # a code arriving without iss (e.g. injected by a local page that learned the state) is
    # refused and never redeemed.
    def injector(url: str) -> bool:
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        httpx.get(f"{query['redirect_uri']}?{urlencode({'code': 'x', 'state': query['state']})}")
        return True

    with pytest.raises(KeybrokerError) as info:
        request_openai_api(broker.url, CLIENT, open_browser=injector, show=lambda _: None)
    assert info.value.code == "invalid_response"
    assert "iss" in info.value.message
    assert not broker.posts("/oauth/token")


def test_a_stalled_local_connection_does_not_block_the_callback(broker: FakeBroker) -> None:
    held: list[socket.socket] = []

    def hog_then_follow(url: str) -> bool:
        # Another local process connects first and sends half a request line, then idles.
        port = urlsplit(parse_qs(urlsplit(url).query)["redirect_uri"][0]).port
        assert port is not None
        hog = socket.create_connection(("127.0.0.1", port))
        hog.sendall(b"GET /callback?st")
        held.append(hog)
        return browser_that_follows_redirects(url)

    try:
        started = time.monotonic()
        access = request_openai_api(
            broker.url, CLIENT, open_browser=hog_then_follow, timeout=30, show=lambda _: None
        )
        assert access["api_key"] == "sk-kb-token1"
        # Served beside the stalled connection, not after its read timeout.
        assert time.monotonic() - started < CONNECTION_TIMEOUT
    finally:
        for hog in held:
            hog.close()


def test_a_connection_that_sends_nothing_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loopback, "CONNECTION_TIMEOUT", 1.0)
    listener = Listener("S" * 22)
    try:
        port = listener.server.server_address[1]
        idle = socket.create_connection(("127.0.0.1", port))
        idle.settimeout(30)
        started = time.monotonic()
        assert idle.recv(1) == b""  # the listener closes it after its read timeout
        assert time.monotonic() - started < 15
        idle.close()
    finally:
        listener.close()
