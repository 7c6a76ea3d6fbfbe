"""A batch's input file is checked line by line (scopes, models, ids) before the batch is
created: a batch cannot get around the grant."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.live import Live


def line(url: str = "/v1/chat/completions", **body: Any) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **body}
    return json.dumps({"custom_id": "x", "method": "POST", "url": url, "body": body}).encode()


def batches_created(live: Live) -> int:
    return sum(1 for s in live.upstream.seen if (s.method, s.path) == ("POST", "/v1/batches"))


def try_batch(sdk: openai.OpenAI, content: bytes, endpoint: str = "/v1/chat/completions") -> Any:
    file = sdk.files.create(file=("in.jsonl", content), purpose="batch").id
    return sdk.batches.create(input_file_id=file, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]


@pytest.fixture
def sdk(live: Live) -> openai.OpenAI:
    token = live.grant(scopes=["chat", "files", "batches"], models="gpt-4o-mini")
    return live.client(token)


def test_a_batch_of_allowed_lines_is_created(live: Live, sdk: openai.OpenAI) -> None:
    batch = try_batch(sdk, line() + b"\n" + line(temperature=0.5) + b"\n")
    assert batch.id.startswith("batch_")


@pytest.mark.parametrize(
    ("content", "endpoint", "error", "code"),
    [
        (
            line() + b"\n" + line(model="gpt-4o"),
            "/v1/chat/completions",
            openai.PermissionDeniedError,
            "model_not_allowed",
        ),
        (
            line("/v1/embeddings", input="x"),
            "/v1/embeddings",
            openai.PermissionDeniedError,
            "scope_not_granted",
        ),
        (
            line("/v1/embeddings"),
            "/v1/chat/completions",
            openai.BadRequestError,
            "invalid_batch_input",
        ),
        (
            line()[:-1] + b",}",
            "/v1/chat/completions",
            openai.BadRequestError,
            "invalid_batch_input",
        ),
        (
            line().replace(b'"gpt-4o-mini"', b'"gpt-4o-mini", "model": "gpt-4o"'),
            "/v1/chat/completions",
            openai.BadRequestError,
            "invalid_batch_input",
        ),
        (
            line().replace(b'"POST"', b'"GET"'),
            "/v1/chat/completions",
            openai.BadRequestError,
            "invalid_batch_input",
        ),
        (
            line("/v1/fine_tuning/jobs"),
            "/v1/fine_tuning/jobs",
            openai.BadRequestError,
            "invalid_batch_input",
        ),
        (b"\n\n", "/v1/chat/completions", openai.BadRequestError, "invalid_batch_input"),
        (
            line("/v1/responses", tools=[{"type": "image_generation", "model": "gpt-image-1"}]),
            "/v1/responses",
            openai.PermissionDeniedError,
            "model_not_allowed",
        ),
        (
            line("/v1/responses", prompt={"id": "pmpt_owner"}),
            "/v1/responses",
            openai.PermissionDeniedError,
            "stored_prompt_not_allowed",
        ),
        (
            line().replace(b'"model": "gpt-4o-mini", ', b""),
            "/v1/chat/completions",
            openai.PermissionDeniedError,
            "model_not_allowed",
        ),
    ],
)
def test_a_line_outside_the_grant_refuses_the_batch(
    live: Live, sdk: openai.OpenAI, content: bytes, endpoint: str, error: type[Exception], code: str
) -> None:
    before = batches_created(live)
    with pytest.raises(error) as raised:
        try_batch(sdk, content, endpoint)
    assert raised.value.code == code  # type: ignore[attr-defined]
    assert batches_created(live) == before


def test_a_line_naming_another_apps_file_refuses_the_batch(live: Live) -> None:
    web, authn = live.owner()
    a = live.client(live.grant_for(web, authn, scopes=["chat", "files", "batches"]))
    b = live.client(live.grant_for(web, authn, scopes=["chat", "files", "batches"]))
    theirs = b.files.create(file=("x.pdf", b"%PDF"), purpose="user_data").id
    content = [{"role": "user", "content": [{"type": "file", "file": {"file_id": theirs}}]}]
    before = batches_created(live)
    with pytest.raises(openai.NotFoundError):
        try_batch(a, line(messages=content))
    assert batches_created(live) == before
    assert try_batch(b, line(messages=content)).id.startswith("batch_")
