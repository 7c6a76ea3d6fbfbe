"""Every model a forwarded body names is on the grant's list (red-team finding 2 of issue
#22): a tool's own model, a stored prompt that carries its own, and a body that names no model
where the route runs one are refused before the upstream."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.live import Live

DRAW = {"type": "image_generation", "model": "gpt-image-1", "quality": "high"}
REFUSED: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "tool model",
        "/v1/responses",
        {"model": "gpt-4o-mini", "input": "draw", "tools": [DRAW]},
        "model_not_allowed",
    ),
    (
        "nested model",
        "/v1/responses",
        {"model": "gpt-4o-mini", "input": "x", "text": {"format": {"model": "gpt-4o"}}},
        "model_not_allowed",
    ),
    (
        "stored prompt",
        "/v1/responses",
        {"prompt": {"id": "pmpt_owner123", "version": "2"}, "input": "hi"},
        "stored_prompt_not_allowed",
    ),
    (
        "stored prompt beside a model",
        "/v1/responses",
        {"model": "gpt-4o-mini", "prompt": {"id": "pmpt_owner123"}, "input": "hi"},
        "stored_prompt_not_allowed",
    ),
    ("no model", "/v1/responses", {"input": "hi"}, "model_not_allowed"),
    ("no model (chat)", "/v1/chat/completions", {"messages": []}, "model_not_allowed"),
    ("no model (images)", "/v1/images/generations", {"prompt": "a cat"}, "model_not_allowed"),
]


@pytest.mark.parametrize(("name", "path", "body", "code"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_model_outside_the_list_anywhere_in_the_body_is_refused(
    live: Live, name: str, path: str, body: dict[str, Any], code: str
) -> None:
    token = live.grant(scopes=["chat", "images"], models="gpt-4o-mini")
    before = len(live.upstream.seen)
    response = httpx.post(
        f"{live.url}{path}",
        content=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == code
    assert len(live.upstream.seen) == before  # the upstream never saw it


def test_allowed_models_in_tools_and_schemas_still_pass(live: Live) -> None:
    token = live.grant(scopes=["chat"], models="gpt-4o-mini")
    schema = {"type": "object", "properties": {"model": {"type": "string"}}}
    tool = {"type": "function", "name": "pick", "parameters": schema}
    body = {"model": "gpt-4o-mini", "input": "hi", "tools": [tool]}
    response = httpx.post(
        f"{live.url}/v1/responses",
        json=body,
        headers={"authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    assert live.upstream.seen[-1].path == "/v1/responses"


def test_a_grant_without_a_model_list_may_omit_the_model(live: Live) -> None:
    token = live.grant(scopes=["images"])
    response = httpx.post(
        f"{live.url}/v1/images/generations",
        json={"prompt": "a cat"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
