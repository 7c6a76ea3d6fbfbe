"""The access log of a live ``keybroker serve`` never holds a user code or a device request's
id (RFC 8628 §5.1: the user code is a short-lived secret; a request id opens its consent screen
to the browser that entered the code)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.loopback import register_app
from tests.live import start_broker
from tests.upstream import Upstream


def test_no_user_code_or_request_id_reaches_the_access_log(
    tmp_path: Path, upstream: Upstream
) -> None:
    broker = start_broker(tmp_path, {"KEYBROKER_UPSTREAM_URL": upstream.url})
    try:
        client_id = register_app(broker, "Logged Tool", "--device")
        data = httpx.post(
            f"{broker.url}/oauth/device_authorization",
            data={"client_id": client_id, "scope": "chat"},
        ).json()
        code = data["user_code"]
        same_origin = {"origin": broker.url, "sec-fetch-site": "same-origin"}
        with httpx.Client(base_url=broker.url) as web:
            # The verification_uri_complete, as a phone's camera opens it: the field is filled.
            prefilled = web.get(data["verification_uri_complete"], follow_redirects=True)
            assert str(prefilled.url) == f"{broker.url}/device"
            assert f'value="{code}"' in prefilled.text
            web.get(f"/device?user_code={code.replace('-', '').lower()}&x=1")
            entered = web.post(
                "/device", data={"user_code": code}, headers=same_origin, follow_redirects=True
            )
            assert str(entered.url) == f"{broker.url}/device/request"
            assert "Sign in" in entered.text
            request_id = web.cookies["kb_device"].partition(".")[0]
            assert len(request_id) >= 20
            wrong = web.post("/device", data={"user_code": "BCDF-GHJK"}, headers=same_origin)
            assert wrong.status_code == 400
    finally:
        broker.process.terminate()
        broker.process.wait(20)  # stopped: every access line is written out
    log = broker.logs()
    assert '"GET /device/request HTTP/1.1" 200' in log  # the access log was on
    assert '"GET /device?[dropped] HTTP/1.1" 303' in log
    normalized = code.replace("-", "")
    for secret in (code, normalized, normalized.lower(), request_id, "BCDFGHJK", "BCDF-GHJK"):
        assert secret not in log, secret
