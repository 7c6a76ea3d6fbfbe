"""The official openai Python SDK through the proxy to the mock upstream."""

from __future__ import annotations

import io
import time

import openai
import pytest

from keybroker.crypto import tokens
from tests.helpers import GOOD_KEY
from tests.live import Live, wait_for
from tests.upstream import SPEECH

ALL = ["chat", "embeddings", "images", "audio", "files", "moderations", "models"]


def grant_id(token: str) -> str:
    return tokens.parse_token(token).grant_id


def last_usage(live: Live, token: str, count: int = 1) -> list:  # type: ignore[type-arg]
    return wait_for(lambda: (rows := live.usage(grant_id(token))) and len(rows) >= count and rows)


def test_chat_completion(live: Live) -> None:
    token = live.grant()
    answer = live.client(token).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "Hello there!"
    assert answer.usage is not None
    row = last_usage(live, token)[-1]
    assert (row.input_tokens, row.output_tokens) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )
    assert row.model == "gpt-4o-mini"
    assert row.status == 200
    assert row.cost_microusd == round(10 * 0.15 + 7 * 0.6)
    assert not row.unknown_model
    # The owner's key went upstream, the app's token did not.
    assert live.upstream.seen[-1].headers["authorization"] == f"Bearer {GOOD_KEY}"


def test_streamed_chat_arrives_chunk_by_chunk(live: Live) -> None:
    token = live.grant()
    stream = live.client(token).chat.completions.create(
        model="gpt-4o-mini",
        stream=True,
        messages=[{"role": "user", "content": "chunks:6 pace:150"}],
    )
    arrivals = []
    texts = []
    for chunk in stream:
        arrivals.append(time.monotonic())
        assert chunk.choices, "the usage-only chunk must not reach a client that did not ask"
        texts.append(chunk.choices[0].delta.content)
    assert texts == [f"w{i} " for i in range(6)]
    # Paced 150 ms apart upstream: the first chunk came long before the last one.
    assert arrivals[-1] - arrivals[0] > 0.5
    row = last_usage(live, token)[-1]
    assert (row.input_tokens, row.output_tokens) == (10, 6)
    assert not row.interrupted


def test_streamed_chat_with_usage_requested_keeps_the_usage_chunk(live: Live) -> None:
    token = live.grant()
    chunks = list(
        live.client(token).chat.completions.create(
            model="gpt-4o-mini",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "chunks:3"}],
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    row = last_usage(live, token)[-1]
    assert (row.input_tokens, row.output_tokens) == (10, 3)


def test_streamed_responses_api(live: Live) -> None:
    token = live.grant()
    events = list(live.client(token).responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "a b c d "
    row = last_usage(live, token)[-1]
    assert (row.input_tokens, row.output_tokens) == (21, 4)


def test_embeddings(live: Live) -> None:
    token = live.grant(scopes=["embeddings"])
    result = live.client(token).embeddings.create(model="text-embedding-3-small", input="x")
    assert result.data[0].embedding == [0.1, 0.2, 0.3]
    row = last_usage(live, token)[-1]
    assert (row.input_tokens, row.output_tokens) == (5, 0)
    assert row.model == "text-embedding-3-small"


def test_image_generation(live: Live) -> None:
    token = live.grant(scopes=["images"])
    result = live.client(token).images.generate(model="gpt-image-1", prompt="a cat")
    assert result.data is not None
    assert result.data[0].b64_json == "aGVsbG8="
    row = last_usage(live, token)[-1]
    # gpt-image-1 reports its tokens: 12 of prompt, 4,160 of image (one high-quality square).
    assert (row.input_tokens, row.output_tokens) == (12, 4160)
    assert row.cost_microusd == 12 * 5 + 4160 * 40


def test_audio_speech_binary(live: Live) -> None:
    token = live.grant(scopes=["audio"])
    audio = live.client(token).audio.speech.create(
        model="gpt-4o-mini-tts", voice="alloy", input="hello"
    )
    assert audio.content == SPEECH


def test_transcription_multipart(live: Live) -> None:
    token = live.grant(scopes=["audio"], models="gpt-4o-mini-transcribe")
    upload = ("hello.mp3", io.BytesIO(SPEECH), "audio/mpeg")
    result = live.client(token).audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=upload
    )
    assert result.text.startswith("heard")
    assert SPEECH in live.upstream.seen[-1].body
    row = last_usage(live, token)[-1]
    assert (row.input_tokens, row.output_tokens) == (14, 3)


def test_file_upload(live: Live) -> None:
    token = live.grant(scopes=["files"])
    content = b"{}\n" * 1000
    result = live.client(token).files.create(file=("data.jsonl", content), purpose="batch")
    assert result.id.startswith("file-")
    assert result.filename == "data.jsonl"
    assert content in live.upstream.seen[-1].body


def test_model_list(live: Live) -> None:
    token = live.grant()
    assert [m.id for m in live.client(token).models.list()] == [
        "gpt-4o-mini",
        "gpt-4o",
        "text-embedding-3-small",
    ]


def test_errors_map_to_the_sdk_exception_classes(live: Live) -> None:
    token = live.grant(scopes=["chat"], models="gpt-4o-mini", rpm="2")
    client = live.client(token)
    with pytest.raises(openai.AuthenticationError):
        live.client("sk-kb-garbage").models.list()
    with pytest.raises(openai.PermissionDeniedError, match="embeddings"):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.PermissionDeniedError, match="model"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    # rpm=2: the refused gpt-4o request above was refused before the limits (it took no slot
    # and reserved nothing); these two take both slots.
    for _ in range(2):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_budget_spent_is_insufficient_quota(live: Live) -> None:
    token = live.grant(budget_usd="0.01")
    client = live.client(token)
    # 1,000 gpt-4o output tokens cost $0.01: this one request spends the whole budget.
    client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "tokens:1000"}]
    )
    assert last_usage(live, token)[-1].cost_microusd == 10 * 2.5 + 1000 * 10
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "insufficient_quota"


def test_upstream_errors_come_back_as_they_are(live: Live) -> None:
    client = live.client(live.grant())
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "error:500"}]
        )
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "error:429"}]
        )
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_upstream_timeout_is_504(live: Live) -> None:
    client = live.client(live.grant())
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "sleep:3000"}]
        )
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"


def test_revoke_then_the_very_next_request_is_401(live: Live) -> None:
    import httpx

    token = live.grant()
    client = live.client(token)
    client.models.list()
    revoked = httpx.post(
        f"{live.url}/oauth/revoke", data={"token": token, "client_id": "http://127.0.0.1:5555"}
    )
    assert revoked.status_code == 200
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.models.list()
