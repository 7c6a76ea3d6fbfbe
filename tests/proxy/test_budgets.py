"""Budgets that hold on every route, tried as an app would: parallel requests against a small
budget, streams cut short, look-alike and unknown models, huge answers, legacy streams,
timeouts, images, speech, transcription and background responses."""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from keybroker.crypto import tokens
from keybroker.proxy.spend import estimate_tokens
from tests.live import Live, wait_for
from tests.upstream import english_tokens

ENGLISH = (
    "The monthly budget an owner sets on the consent screen is a promise that an app cannot "
    "drain their account. When several requests arrive at the same moment, each of them must "
    "reserve what it may cost before it is sent, and settle to its real cost when it ends. "
)


def post(live: Live, token: str, path: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(
        f"{live.url}/v1{path}",
        json=body,
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
        **kw,
    )


def all_at_once(
    live: Live, token: str, path: str, body: dict[str, Any], count: int
) -> list[httpx.Response]:
    """``count`` requests sent together: clients made first, then released by a barrier."""
    clients = [httpx.Client(base_url=live.url, timeout=30) for _ in range(count)]
    start = threading.Barrier(count)

    def one(client: httpx.Client) -> httpx.Response:
        start.wait()
        return client.post(f"/v1{path}", json=body, headers={"authorization": f"Bearer {token}"})

    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(one, clients))
    finally:
        for client in clients:
            client.close()


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def grant_id(token: str) -> str:
    return tokens.parse_token(token).grant_id


def costs(live: Live, token: str, count: int) -> list[int]:
    rows = wait_for(lambda: len(live.usage(grant_id(token))) >= count, timeout=10)
    assert rows, live.usage(grant_id(token))
    return [r.cost_microusd for r in live.usage(grant_id(token))]


def test_twenty_parallel_requests_against_a_budget_that_fits_three(live: Live) -> None:
    # $0.01: each request reserves 5,000 output tokens at $0.60/1M ($0.003) plus its input,
    # so three fit and a fourth does not. Each really costs $0.002942.
    token = live.grant(budget_usd="0.01")
    body = chat("sleep:1500 tokens:4900", max_tokens=5000)
    before = len(live.upstream.seen)
    answers = all_at_once(live, token, "/chat/completions", body, 20)
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 3, statuses
    refused = [a for a in answers if a.status_code != 200]
    assert {a.status_code for a in refused} == {429}
    assert {a.json()["error"]["code"] for a in refused} == {"insufficient_quota"}
    assert len(live.upstream.seen) - before == 3  # the refused never reached the upstream
    spent = costs(live, token, 3)
    assert spent == [math.ceil(10 * 0.15 + 4900 * 0.6)] * 3
    assert sum(spent) <= 10_000
    info = httpx.get(f"{live.url}/api/grant", headers={"authorization": f"Bearer {token}"}).json()
    assert info["spent_this_month_usd"] == pytest.approx(sum(spent) / 1e6)
    assert info["reserved_usd"] == 0


def test_one_request_at_a_time_when_the_budget_is_nearly_spent(live: Live) -> None:
    # No false refusals: a request whose worst case no longer fits goes alone, holding all
    # that is left; it is the one request that may overrun.
    token = live.grant(budget_usd="0.01")
    body = chat("tokens:4900", max_tokens=5000)
    for _ in range(3):
        assert post(live, token, "/chat/completions", body).status_code == 200
    spent = sum(costs(live, token, 3))
    assert 10_000 - spent < 3_000  # the next one's worst case does not fit
    alone: list[httpx.Response] = []
    slow = threading.Thread(
        target=lambda: alone.append(
            post(live, token, "/chat/completions", chat("sleep:800 tokens:4900", max_tokens=5000))
        )
    )
    slow.start()
    try:
        assert wait_for(lambda: reserved(live, token) == 10_000 - spent, timeout=5)
        beside = post(live, token, "/chat/completions", chat("tokens:1", max_tokens=1))
        assert beside.json()["error"]["code"] == "insufficient_quota"
    finally:
        slow.join()
    assert alone[0].status_code == 200
    assert sum(costs(live, token, 4)) > 10_000  # the one overrun: what it cost beyond its hold
    after = post(live, token, "/chat/completions", chat("tokens:1", max_tokens=1))
    assert after.json()["error"]["code"] == "insufficient_quota"


def reserved(live: Live, token: str) -> int:
    info = httpx.get(f"{live.url}/api/grant", headers={"authorization": f"Bearer {token}"}).json()
    return round(info["reserved_usd"] * 1e6)


def test_a_stream_cut_after_its_first_event_is_charged_at_least_its_input(live: Live) -> None:
    token = live.grant()
    text = ENGLISH * 400 + " realistic:1 pace:200 chunks:50"
    truth = english_tokens(text)  # what the upstream bills as input
    with httpx.stream(
        "POST",
        f"{live.url}/v1/chat/completions",
        json=chat(text, stream=True),
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # the app goes away after the first event
    rows = wait_for(lambda: live.usage(grant_id(token)), timeout=10)
    (row,) = rows
    assert row.interrupted
    assert truth <= row.input_tokens <= 1.25 * truth
    assert row.cost_microusd >= math.ceil(truth * 0.15)
    assert row.output_tokens >= 1


def test_an_unknown_model_is_refused_and_look_alikes_pay_their_own_price(live: Live) -> None:
    token = live.grant(budget_usd="5")
    before = len(live.upstream.seen)
    for model in ("gpt-4o-mini-2099-01-01", "o1-pro-max", "gpt-5-turbo", "my-model"):
        refused = post(live, token, "/chat/completions", {**chat("x"), "model": model})
        assert refused.status_code == 403, model
        error = refused.json()["error"]
        assert error["code"] == "model_not_priced"
        assert model in error["message"]
        assert "operator" in error["message"]
    with pytest.raises(openai.PermissionDeniedError, match="no price"):
        live.client(token).responses.create(model="o3-pro-2099", input="x")
    assert len(live.upstream.seen) == before
    # o1-pro is not o1 and gpt-5-pro is not gpt-5: each at its own list price.
    for model in ("o1-pro", "gpt-5-pro"):
        answer = post(
            live, token, "/responses", {"model": model, "input": "x", "max_output_tokens": 100}
        )
        assert answer.status_code == 200
    assert costs(live, token, 2) == [21 * 150 + 4 * 600, 21 * 15 + 4 * 120]


def test_a_9_mb_answer_is_charged_from_its_usage(live: Live) -> None:
    token = live.grant()
    answer = post(live, token, "/chat/completions", chat("bulk:9000000"))
    assert answer.status_code == 200
    assert len(answer.content) > 9_000_000
    (row,) = wait_for(lambda: live.usage(grant_id(token)), timeout=10)
    assert (row.input_tokens, row.output_tokens) == (10, 7)
    assert row.cost_microusd == math.ceil(10 * 0.15 + 7 * 0.6)
    assert not row.interrupted


def test_a_legacy_completions_stream_asks_for_usage_and_is_charged(live: Live) -> None:
    token = live.grant()
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "say abc", "stream": True}
    answer = post(live, token, "/completions", body)
    assert answer.status_code == 200
    sent = json.loads(live.upstream.seen[-1].body)
    assert sent["stream_options"] == {"include_usage": True}
    assert '"usage"' not in answer.text  # the app did not ask for it: it gets none
    (row,) = wait_for(lambda: live.usage(grant_id(token)), timeout=10)
    assert (row.input_tokens, row.output_tokens) == (9, 3)
    assert row.cost_microusd == math.ceil(9 * 1.5 + 3 * 2.0)


def test_an_upstream_timeout_is_charged_its_input(live: Live) -> None:
    token = live.grant()  # the live broker's upstream timeout is 2 s
    body = chat(ENGLISH * 20 + " sleep:3000")
    answer = post(live, token, "/chat/completions", body)
    assert answer.status_code == 504
    (row,) = wait_for(lambda: live.usage(grant_id(token)), timeout=10)
    assert row.status == 504
    assert row.interrupted
    assert row.input_tokens >= english_tokens(body["messages"][0]["content"])
    assert row.cost_microusd == math.ceil(row.input_tokens * 0.15)


def test_images_are_charged_per_image_or_by_their_tokens(live: Live) -> None:
    token = live.grant(scopes=["images"])
    dalle = {"model": "dall-e-3", "prompt": "a cat", "quality": "hd", "size": "1024x1792"}
    assert post(live, token, "/images/generations", dalle).status_code == 200
    tokened = {"model": "gpt-image-1", "prompt": "a cat", "quality": "high"}
    assert post(live, token, "/images/generations", tokened).status_code == 200
    # dall-e-3 answers with no usage: per image. gpt-image-1 reports its tokens.
    assert costs(live, token, 2) == [120_000, 12 * 5 + 4160 * 40]
    edit = httpx.post(
        f"{live.url}/v1/images/edits",
        data={"model": "dall-e-2", "prompt": "a hat", "n": "2", "size": "512x512"},
        files={"image": ("a.png", b"\x89PNG" + b"\x00" * 100, "image/png")},
        headers={"authorization": f"Bearer {token}"},
    )
    assert edit.status_code == 200
    assert costs(live, token, 3)[2] == 2 * 18_000  # two 512x512 dall-e-2 images


def test_speech_is_charged_per_character(live: Live) -> None:
    token = live.grant(scopes=["audio"])
    speech = live.client(token).audio.speech.create(
        model="tts-1", voice="alloy", input="hello world"
    )
    assert speech.content.startswith(b"ID3")
    assert costs(live, token, 1) == [11 * 15]


def test_transcription_is_charged_by_the_minute_or_its_tokens(live: Live) -> None:
    token = live.grant(scopes=["audio"])
    client = live.client(token)
    heard = client.audio.transcriptions.create(
        model="whisper-1", file=("a.mp3", b"ID3" + b"\x00" * 1000, "audio/mpeg")
    )
    assert heard.text.startswith("heard")
    client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.mp3", b"ID3" + b"\x00" * 1000, "audio/mpeg")
    )
    # whisper-1 said 90 s ($0.006 a minute); gpt-4o-transcribe reported its tokens.
    assert costs(live, token, 2) == [9_000, math.ceil(14 * 2.5 + 3 * 10)]
    with pytest.raises(openai.PermissionDeniedError, match="no price"):
        client.audio.transcriptions.create(model="whisper-2", file=("a.mp3", b"ID3", "audio/mpeg"))


def test_a_background_response_is_reserved_up_front_and_settled_when_fetched(
    live: Live,
) -> None:
    token = live.grant()
    client = live.client(token)
    queued = client.responses.create(
        model="gpt-4o", input="hi", background=True, max_output_tokens=1000
    )
    assert queued.status == "queued"
    (created,) = costs(live, token, 1)
    assert created >= 1000 * 10  # its worst case, until it is known
    done = client.responses.retrieve(queued.id)
    assert done.status == "completed"
    rows = costs(live, token, 2)
    assert sum(rows) == math.ceil(21 * 2.5 + 4 * 10)
    client.responses.retrieve(queued.id)  # fetched again: settled once only
    assert sum(costs(live, token, 3)) == math.ceil(21 * 2.5 + 4 * 10)
    info = httpx.get(f"{live.url}/api/grant", headers={"authorization": f"Bearer {token}"}).json()
    assert info["spent_this_month_usd"] == pytest.approx((21 * 2.5 + 4 * 10 + 0.5) / 1e6)


def test_grant_info_and_settings_show_spent_and_reserved_apart(live: Live) -> None:
    web, authn = live.owner()
    token = live.grant_for(web, authn, budget_usd="2")
    body = chat("sleep:1500", max_tokens=1000)
    slow = threading.Thread(target=post, args=(live, token, "/chat/completions", body))
    slow.start()
    try:

        def in_flight() -> dict[str, Any] | None:
            info: dict[str, Any] = httpx.get(
                f"{live.url}/api/grant", headers={"authorization": f"Bearer {token}"}
            ).json()
            return info if info["reserved_usd"] > 0 else None

        info = wait_for(in_flight, timeout=5)
        assert info is not None
        reserved = info["reserved_usd"]
        assert reserved == pytest.approx(
            (estimate_tokens(json.dumps(body).encode()) * 0.15 + 600) / 1e6, abs=2e-6
        )
        assert info["spent_this_month_usd"] == 0
        assert info["remaining_budget_usd"] == pytest.approx(2 - reserved)
        page = web.get("/settings").text
        assert "In flight" in page
        assert "$0.0006" in page
    finally:
        slow.join()
    costs(live, token, 1)
    time.sleep(0.05)
    info = httpx.get(f"{live.url}/api/grant", headers={"authorization": f"Bearer {token}"}).json()
    assert info["reserved_usd"] == 0
    assert info["spent_this_month_usd"] == pytest.approx(6e-6)
