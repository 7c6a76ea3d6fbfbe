"""Every (method, path template) pair of every scope, tried with the official openai SDK
through the proxy against the test upstream; and pairs no scope lists, refused before it."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from keybroker.proxy import ownership, scopes
from tests.live import Live

Ids = dict[str, str]
Call = Callable[[openai.OpenAI, Ids], Any]
TEXT = [{"role": "user", "content": "hi"}]
BATCH_LINE = (
    b'{"custom_id":"1","method":"POST","url":"/v1/chat/completions",'
    b'"body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}}\n'
)


def keep(ids: Ids, name: str) -> Callable[[Any], Any]:
    def take(result: Any) -> Any:
        ids[name] = result.id
        return result

    return take


def deprecated(call: Callable[[], Any]) -> Any:
    """A call the SDK marks deprecated (the endpoint is still served)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return call()


# In order: the calls that make objects come before those that use them.
CALLS: list[tuple[str, str, Call]] = [
    (
        "POST",
        "/chat/completions",
        lambda c, i: keep(i, "chat")(
            c.chat.completions.create(model="gpt-4o-mini", messages=TEXT, store=True)
        ),
    ),
    ("GET", "/chat/completions", lambda c, i: c.chat.completions.list()),
    (
        "GET",
        "/chat/completions/{completion_id}",
        lambda c, i: c.chat.completions.retrieve(i["chat"]),
    ),
    (
        "POST",
        "/chat/completions/{completion_id}",
        lambda c, i: c.chat.completions.update(i["chat"], metadata={"a": "b"}),
    ),
    (
        "GET",
        "/chat/completions/{completion_id}/messages",
        lambda c, i: c.chat.completions.messages.list(i["chat"]),
    ),
    (
        "DELETE",
        "/chat/completions/{completion_id}",
        lambda c, i: c.chat.completions.delete(i["chat"]),
    ),
    (
        "POST",
        "/completions",
        lambda c, i: c.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi"),
    ),
    (
        "POST",
        "/responses",
        lambda c, i: keep(i, "resp")(c.responses.create(model="gpt-4o-mini", input="hi")),
    ),
    (
        "POST",
        "/responses/input_tokens",
        lambda c, i: c.responses.input_tokens.count(model="gpt-4o-mini", input="hi"),
    ),
    (
        "POST",
        "/responses/compact",
        lambda c, i: c.responses.compact(model="gpt-4o-mini", previous_response_id=i["resp"]),
    ),
    ("GET", "/responses/{response_id}", lambda c, i: c.responses.retrieve(i["resp"])),
    (
        "GET",
        "/responses/{response_id}/input_items",
        lambda c, i: c.responses.input_items.list(i["resp"]),
    ),
    ("POST", "/responses/{response_id}/cancel", lambda c, i: c.responses.cancel(i["resp"])),
    ("DELETE", "/responses/{response_id}", lambda c, i: c.responses.delete(i["resp"])),
    (
        "POST",
        "/conversations",
        lambda c, i: keep(i, "conv")(c.conversations.create(items=[TEXT[0]])),
    ),
    ("GET", "/conversations/{conversation_id}", lambda c, i: c.conversations.retrieve(i["conv"])),
    (
        "POST",
        "/conversations/{conversation_id}",
        lambda c, i: c.conversations.update(i["conv"], metadata={"a": "b"}),
    ),
    (
        "POST",
        "/conversations/{conversation_id}/items",
        lambda c, i: i.update(
            item=c.conversations.items.create(i["conv"], items=[TEXT[0]]).data[0].id
        ),
    ),
    (
        "GET",
        "/conversations/{conversation_id}/items",
        lambda c, i: c.conversations.items.list(i["conv"]),
    ),
    (
        "GET",
        "/conversations/{conversation_id}/items/{item_id}",
        lambda c, i: c.conversations.items.retrieve(i["item"], conversation_id=i["conv"]),
    ),
    (
        "DELETE",
        "/conversations/{conversation_id}/items/{item_id}",
        lambda c, i: c.conversations.items.delete(i["item"], conversation_id=i["conv"]),
    ),
    ("DELETE", "/conversations/{conversation_id}", lambda c, i: c.conversations.delete(i["conv"])),
    (
        "POST",
        "/embeddings",
        lambda c, i: c.embeddings.create(model="text-embedding-3-small", input="hi"),
    ),
    (
        "POST",
        "/images/generations",
        lambda c, i: c.images.generate(model="gpt-image-1", prompt="a cat"),
    ),
    (
        "POST",
        "/images/edits",
        lambda c, i: c.images.edit(model="gpt-image-1", image=("a.png", b"PNG"), prompt="x"),
    ),
    (
        "POST",
        "/images/variations",
        lambda c, i: deprecated(
            lambda: c.images.create_variation(model="dall-e-2", image=("a.png", b"PNG"))
        ),
    ),
    (
        "POST",
        "/audio/speech",
        lambda c, i: c.audio.speech.create(
            model="gpt-4o-mini-tts", voice="alloy", input="hi"
        ).read(),
    ),
    (
        "POST",
        "/audio/transcriptions",
        lambda c, i: c.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"ID3")),
    ),
    (
        "POST",
        "/audio/translations",
        lambda c, i: deprecated(
            lambda: c.audio.translations.create(model="whisper-1", file=("a.mp3", b"ID3"))
        ),
    ),
    (
        "POST",
        "/files",
        lambda c, i: keep(i, "file")(c.files.create(file=("b.jsonl", BATCH_LINE), purpose="batch")),
    ),
    ("GET", "/files", lambda c, i: c.files.list()),
    ("GET", "/files/{file_id}", lambda c, i: c.files.retrieve(i["file"])),
    ("GET", "/files/{file_id}/content", lambda c, i: c.files.content(i["file"]).read()),
    (
        "POST",
        "/uploads",
        lambda c, i: keep(i, "upload")(
            c.uploads.create(bytes=3, filename="u.jsonl", mime_type="text/jsonl", purpose="batch")
        ),
    ),
    (
        "POST",
        "/uploads/{upload_id}/parts",
        lambda c, i: keep(i, "part")(c.uploads.parts.create(i["upload"], data=io.BytesIO(b"{}\n"))),
    ),
    (
        "POST",
        "/uploads/{upload_id}/complete",
        lambda c, i: i.update(
            uploaded=c.uploads.complete(i["upload"], part_ids=[i["part"]]).file.id
        ),
    ),
    ("POST", "/uploads/{upload_id}/cancel", lambda c, i: c.uploads.cancel(i["upload"])),
    (
        "POST",
        "/vector_stores",
        lambda c, i: keep(i, "vs")(c.vector_stores.create(name="v", file_ids=[i["file"]])),
    ),
    ("GET", "/vector_stores", lambda c, i: c.vector_stores.list()),
    ("GET", "/vector_stores/{vector_store_id}", lambda c, i: c.vector_stores.retrieve(i["vs"])),
    (
        "POST",
        "/vector_stores/{vector_store_id}",
        lambda c, i: c.vector_stores.update(i["vs"], name="w"),
    ),
    (
        "POST",
        "/vector_stores/{vector_store_id}/search",
        lambda c, i: c.vector_stores.search(i["vs"], query="q"),
    ),
    (
        "POST",
        "/vector_stores/{vector_store_id}/files",
        lambda c, i: c.vector_stores.files.create(vector_store_id=i["vs"], file_id=i["uploaded"]),
    ),
    (
        "GET",
        "/vector_stores/{vector_store_id}/files",
        lambda c, i: c.vector_stores.files.list(i["vs"]),
    ),
    (
        "GET",
        "/vector_stores/{vector_store_id}/files/{file_id}",
        lambda c, i: c.vector_stores.files.retrieve(i["file"], vector_store_id=i["vs"]),
    ),
    (
        "POST",
        "/vector_stores/{vector_store_id}/files/{file_id}",
        lambda c, i: c.vector_stores.files.update(
            i["file"], vector_store_id=i["vs"], attributes={"a": "b"}
        ),
    ),
    (
        "GET",
        "/vector_stores/{vector_store_id}/files/{file_id}/content",
        lambda c, i: c.vector_stores.files.content(i["file"], vector_store_id=i["vs"]),
    ),
    (
        "POST",
        "/vector_stores/{vector_store_id}/file_batches",
        lambda c, i: keep(i, "vsfb")(
            c.vector_stores.file_batches.create(i["vs"], file_ids=[i["uploaded"]])
        ),
    ),
    (
        "GET",
        "/vector_stores/{vector_store_id}/file_batches/{file_batch_id}",
        lambda c, i: c.vector_stores.file_batches.retrieve(i["vsfb"], vector_store_id=i["vs"]),
    ),
    (
        "GET",
        "/vector_stores/{vector_store_id}/file_batches/{file_batch_id}/files",
        lambda c, i: c.vector_stores.file_batches.list_files(i["vsfb"], vector_store_id=i["vs"]),
    ),
    (
        "POST",
        "/vector_stores/{vector_store_id}/file_batches/{file_batch_id}/cancel",
        lambda c, i: c.vector_stores.file_batches.cancel(i["vsfb"], vector_store_id=i["vs"]),
    ),
    (
        "DELETE",
        "/vector_stores/{vector_store_id}/files/{file_id}",
        lambda c, i: c.vector_stores.files.delete(i["file"], vector_store_id=i["vs"]),
    ),
    ("DELETE", "/vector_stores/{vector_store_id}", lambda c, i: c.vector_stores.delete(i["vs"])),
    ("POST", "/moderations", lambda c, i: c.moderations.create(input="hi")),
    ("GET", "/models", lambda c, i: c.models.list()),
    ("GET", "/models/{model}", lambda c, i: c.models.retrieve("gpt-4o-mini")),
    (
        "POST",
        "/batches",
        lambda c, i: keep(i, "batch")(
            c.batches.create(
                input_file_id=i["file"], endpoint="/v1/chat/completions", completion_window="24h"
            )
        ),
    ),
    ("GET", "/batches", lambda c, i: c.batches.list()),
    ("GET", "/batches/{batch_id}", lambda c, i: c.batches.retrieve(i["batch"])),
    ("POST", "/batches/{batch_id}/cancel", lambda c, i: c.batches.cancel(i["batch"])),
    (
        "POST",
        "/fine_tuning/jobs",
        lambda c, i: keep(i, "job")(
            c.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=i["file"])
        ),
    ),
    ("GET", "/fine_tuning/jobs", lambda c, i: c.fine_tuning.jobs.list()),
    (
        "GET",
        "/fine_tuning/jobs/{fine_tuning_job_id}",
        lambda c, i: c.fine_tuning.jobs.retrieve(i["job"]),
    ),
    (
        "GET",
        "/fine_tuning/jobs/{fine_tuning_job_id}/events",
        lambda c, i: c.fine_tuning.jobs.list_events(i["job"]),
    ),
    (
        "GET",
        "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
        lambda c, i: c.fine_tuning.jobs.checkpoints.list(i["job"]),
    ),
    (
        "POST",
        "/fine_tuning/jobs/{fine_tuning_job_id}/pause",
        lambda c, i: c.fine_tuning.jobs.pause(i["job"]),
    ),
    (
        "POST",
        "/fine_tuning/jobs/{fine_tuning_job_id}/resume",
        lambda c, i: c.fine_tuning.jobs.resume(i["job"]),
    ),
    (
        "POST",
        "/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
        lambda c, i: c.fine_tuning.jobs.cancel(i["job"]),
    ),
    ("DELETE", "/files/{file_id}", lambda c, i: c.files.delete(i["file"])),
]


def test_the_calls_cover_every_listed_pair_once() -> None:
    listed = {(r.method, r.template) for r in scopes.all_pairs()}
    tried = [(method, template) for method, template, _ in CALLS]
    assert len(tried) == len(set(tried))
    assert set(tried) == listed


def test_every_listed_pair_works_with_the_sdk(live: Live) -> None:
    token = live.grant(scopes=[s.name for s in scopes.SCOPES])
    sdk = live.client(token)
    ids: Ids = {}
    for method, template, call in CALLS:
        before = len(live.upstream.seen)
        call(sdk, ids)
        reached = live.upstream.seen[before:]
        # One request upstream; a filtered list may walk several pages of the same list, and a
        # batch's input file is read before the batch is made.
        pairs = []
        for seen in reached:
            found = scopes.match(seen.method, seen.path.removeprefix("/v1"))
            assert found is not None, (seen.method, seen.path)
            pairs.append((found.route.method, found.route.template))
        assert pairs[-1] == (method, template)
        if (method, template) in ownership.LISTS:
            assert set(pairs) == {(method, template)}
        elif (method, template) == ("POST", "/batches"):
            assert pairs == [("GET", "/files/{file_id}/content"), (method, template)]
        else:
            assert len(pairs) == 1, pairs


UNLISTED = [
    ("DELETE", "/v1/models/ft:gpt-4o-mini:org::abc", ["models"]),
    ("POST", "/v1/models", ["models"]),
    ("TRACE", "/v1/models", ["models"]),
    ("TRACE", "/v1/chat/completions", ["chat"]),
    ("PUT", "/v1/files/file-1", ["files"]),
    ("PATCH", "/v1/chat/completions/chatcmpl-1", ["chat"]),
    ("PROPFIND", "/v1/files", ["files"]),
    ("HEAD", "/v1/models", ["models"]),
    ("GET", "/v1/organization/users", ["chat", "files", "models"]),
    ("GET", "/v1/organization/admin_api_keys", ["chat", "files", "models"]),
    ("GET", "/v1/assistants", ["chat"]),
    ("POST", "/v1/threads", ["chat"]),
    ("GET", "/v1/containers", ["chat", "files"]),
    ("GET", "/v1/files/", ["files"]),
    ("GET", "/v1/files/file-1/content/x", ["files"]),
    ("POST", "/v1/responses/resp_1", ["chat"]),
    ("GET", "/v1/realtime/sessions", ["chat"]),
]


@pytest.mark.parametrize(("method", "path", "granted"), UNLISTED)
def test_unlisted_pairs_are_404_without_reaching_the_upstream(
    live: Live, method: str, path: str, granted: list[str]
) -> None:
    token = live.grant(scopes=granted)
    before = len(live.upstream.seen)
    response = httpx.request(
        method, f"{live.url}{path}", headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 404
    if method != "HEAD":
        error = response.json()["error"]
        assert error["code"] == "unknown_url"
        assert set(error) == {"message", "type", "param", "code"}
    assert len(live.upstream.seen) == before


@pytest.mark.parametrize(
    ("path", "scope"),
    [("/fine_tuning/jobs", "fine_tuning"), ("/batches", "batches"), ("/files", "files")],
)
def test_listed_pairs_outside_the_grant_are_403_without_reaching_the_upstream(
    live: Live, path: str, scope: str
) -> None:
    token = live.grant(scopes=["chat", "models"])
    before = len(live.upstream.seen)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        live.client(token).get(path, cast_to=object)
    assert scope in refused.value.message
    assert len(live.upstream.seen) == before


def test_batches_and_fine_tuning_are_off_on_the_consent_screen(live: Live) -> None:
    from tests.helpers import APP, pkce

    web, _ = live.owner()
    _, challenge = pkce()
    page = web.get(
        "/authorize",
        params={
            "response_type": "code",
            "response_mode": "web_message",
            "client_id": APP,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "s",
            "scope": "chat batches fine_tuning",
        },
    ).text
    assert 'value="chat" checked' in page
    assert 'value="batches">' in page
    assert 'value="fine_tuning">' in page
    assert "Batches: run many requests" in page
