"""Unit tests of the proxy's pieces: paths, limits, pricing, bodies, usage parsing (scopes and
framing: test_scopes.py, test_framing.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import select
from sqlmodel import Session
from starlette.testclient import TestClient

from keybroker import provider_keys
from keybroker.app import create_app
from keybroker.context import get_context
from keybroker.models import User
from keybroker.proxy.bodies import add_include_usage
from keybroker.proxy.framing import strict_json
from keybroker.proxy.limits import MemoryLimits
from keybroker.proxy.paths import UnsafePathError, api_path
from keybroker.proxy.pricing import PriceTable, Tokens
from keybroker.proxy.usage import Seen, event_usage
from keybroker.settings import Settings
from tests.conftest import BROKER
from tests.helpers import grant_token, register


@pytest.mark.parametrize(
    "raw",
    [
        b"/v1/../x",
        b"/v1/a/%2e%2e/b",
        b"/v1//x",
        b"/v1/a\\b",
        b"/v2/models",
        b"/v1/",
        b"/v1/a/./b",
        "/v1/é".encode(),
    ],
)
def test_unsafe_paths(raw: bytes) -> None:
    with pytest.raises(UnsafePathError):
        api_path(raw)


def test_gcra_allows_a_burst_of_rpm_then_one_per_interval() -> None:
    now = [1000.0]
    limits = MemoryLimits(clock=lambda: now[0])

    assert [limits.check("g", 10).allowed for _ in range(11)] == [True] * 10 + [False]
    now[0] += 6.0  # one interval (60 s / 10)
    assert limits.check("g", 10).allowed
    denied = limits.check("g", 10)
    assert not denied.allowed
    assert 1 <= denied.retry_after <= 6


def test_pricing_by_exact_id_and_snapshot_never_by_prefix() -> None:
    table = PriceTable.load()
    mini = table.price("gpt-4o-mini-2024-07-18")
    assert mini is not None
    assert (mini.model, mini.input, mini.output) == ("gpt-4o-mini", 0.15, 0.6)
    assert table.cost("gpt-4o-mini", Tokens(input=1_000_000, output=1_000_000)) == 750_000
    # Look-alikes are their own products at their own prices, or have none.
    assert table.price("o1-pro").input == 150.0  # type: ignore[union-attr]
    assert table.price("gpt-5-pro").output == 120.0  # type: ignore[union-attr]
    assert table.price("o3-pro").input == 20.0  # type: ignore[union-attr]
    for model in ("gpt-4o-mini-2099-01-01", "o1-pro-max", "gpt-5-turbo", "my-own-model", "gpt"):
        assert table.price(model) is None, model
        assert table.cost(model, Tokens(input=10, output=10)) is None
    assert table.price("gpt-4o-2024-05-13").input == 5.0  # type: ignore[union-attr]
    assert table.date


def test_include_usage_is_added_without_rewriting_the_body() -> None:
    body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"a  b"}]}  '
    changed = add_include_usage(body, strict_json(body))
    assert changed == body.rstrip()[:-1] + b',"stream_options":{"include_usage":true}}'
    already = b'{"stream":true,"stream_options":{"include_usage":true}}'
    assert add_include_usage(already, strict_json(already)) is None


def test_event_usage_reads_chat_and_responses_streams() -> None:
    seen = Seen()
    assert not event_usage(b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}', seen)
    assert event_usage(
        b'data: {"object":"chat.completion.chunk","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":4}}',
        seen,
    )
    assert (seen.input_tokens, seen.output_tokens, seen.deltas) == (3, 4, 1)
    other = Seen()
    event_usage(
        b'event: response.completed\ndata: {"type":"response.completed","response":'
        b'{"model":"gpt-4o","usage":{"input_tokens":5,"output_tokens":6}}}',
        other,
    )
    assert (other.input_tokens, other.output_tokens, other.model) == (5, 6, "gpt-4o")


def test_unreachable_upstream_is_502(settings: Settings) -> None:
    app = create_app(replace(settings, upstream_url="http://127.0.0.1:9/v1"))
    with TestClient(app, base_url=BROKER) as client:
        authn = register(client)
        ctx = get_context(client)  # type: ignore[arg-type]
        with Session(ctx.engine) as db:
            user_id = db.execute(select(User.id)).scalar_one()
        # The key check at save time needs the upstream too, so the key is stored directly.
        provider_keys.save_key(ctx.engine, ctx.ring, user_id=user_id, key="sk-test-" + "u" * 30)
        token = grant_token(client, authn)["access_token"]
        response = client.get("/v1/models", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
