"""An upstream that echoes the key it was given in an error: the app never sees sk- text."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import GOOD_KEY
from tests.live import Live


@pytest.mark.parametrize("echo", ["whole", "masked", "ellipsis", "utf8"])
def test_an_echoed_key_is_hidden_from_the_app(live: Live, echo: str) -> None:
    token = live.grant()
    response = httpx.post(
        f"{live.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {token}", "x-stainless-test-echo": echo},
    )
    assert live.upstream.seen[-1].headers["x-stainless-test-echo"] == echo  # it did go up
    assert response.status_code == 401
    assert "sk-" not in response.text
    assert GOOD_KEY[-4:] not in response.text
    assert "\\u2026" not in response.text
    assert "\u2026" not in response.text
    assert int(response.headers["content-length"]) == len(response.content)
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["message"].startswith("Incorrect API key provided: [a key, hidden by keybroker]")


def test_the_sdk_raises_its_usual_error_without_the_key(live: Live) -> None:
    token = live.grant()
    sdk = live.client(token, default_headers={"x-stainless-test-echo": "whole"})
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk.models.list()
    assert "sk-" not in str(raised.value)
    assert GOOD_KEY not in repr(raised.value.body)
