"""Each grant sees only its own objects: two apps of one owner (one OpenAI account behind
them) and the owner's own objects made outside keybroker, tried with the official SDK. A
refusal must never reach the upstream (the test upstream records every request)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from keybroker.proxy import ownership
from tests.live import Live

ALL = ["chat", "files", "batches", "fine_tuning", "models"]
BATCH_LINE = (
    b'{"custom_id":"1","method":"POST","url":"/v1/chat/completions",'
    b'"body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}}\n'
)


@dataclass
class Apps:
    a: openai.OpenAI
    b: openai.OpenAI
    b_token: str
    live: Live

    def refused(self, call: Callable[[], Any]) -> None:
        """The call is 404 as for an object that does not exist, and never reached upstream."""
        before = len(self.live.upstream.seen)
        with pytest.raises(openai.NotFoundError) as raised:
            call()
        assert raised.value.code == "not_found"
        assert len(self.live.upstream.seen) == before


@pytest.fixture
def apps(live: Live) -> Apps:
    web, authn = live.owner()
    a = live.grant_for(web, authn, scopes=ALL)
    b = live.grant_for(web, authn, scopes=ALL)
    return Apps(live.client(a), live.client(b), b, live)


def owners_own(live: Live, kind: str, **fields: Any) -> str:
    """An object the owner made outside keybroker (straight in the upstream account)."""
    obj_id: str = live.upstream.objects.add(kind, **fields)["id"]
    if kind == "file":
        live.upstream.objects.content[obj_id] = BATCH_LINE
    return obj_id


def test_files_are_seen_only_by_the_app_that_made_them(apps: Apps) -> None:
    mine = apps.a.files.create(file=("a.jsonl", BATCH_LINE), purpose="batch").id
    owners = owners_own(apps.live, "file", filename="o", purpose="batch", bytes=1)
    assert apps.a.files.retrieve(mine).id == mine
    assert apps.a.files.content(mine).read() == BATCH_LINE
    assert [f.id for f in apps.a.files.list()] == [mine]
    assert [f.id for f in apps.b.files.list()] == []
    for sdk in (apps.a, apps.b):
        apps.refused(lambda sdk=sdk: sdk.files.retrieve(owners))  # type: ignore[misc]
    apps.refused(lambda: apps.b.files.retrieve(mine))
    apps.refused(lambda: apps.b.files.content(mine))
    apps.refused(lambda: apps.b.files.delete(mine))
    apps.refused(lambda: apps.b.files.list(after=mine))
    assert apps.a.files.delete(mine).deleted
    apps.refused(lambda: apps.a.files.retrieve(mine))  # gone from the grant's record too


def test_uploads_give_their_file_to_the_app(apps: Apps) -> None:
    upload = apps.a.uploads.create(
        bytes=3, filename="u.jsonl", mime_type="text/jsonl", purpose="batch"
    )
    apps.refused(lambda: apps.b.uploads.parts.create(upload.id, data=b"{}\n"))
    part = apps.a.uploads.parts.create(upload.id, data=b"{}\n")
    apps.refused(lambda: apps.b.uploads.complete(upload.id, part_ids=[part.id]))
    done = apps.a.uploads.complete(upload.id, part_ids=[part.id])
    assert done.file is not None
    assert apps.a.files.retrieve(done.file.id).id == done.file.id
    apps.refused(lambda: apps.b.files.retrieve(done.file.id))  # type: ignore[union-attr]


def test_responses_by_id_and_through_previous_response_id(apps: Apps) -> None:
    first = apps.a.responses.create(model="gpt-4o-mini", input="hi")
    assert apps.a.responses.retrieve(first.id).id == first.id
    follow = apps.a.responses.create(
        model="gpt-4o-mini", input="more", previous_response_id=first.id
    )
    assert follow.id != first.id
    apps.refused(lambda: apps.b.responses.retrieve(first.id))
    apps.refused(lambda: apps.b.responses.input_items.list(first.id))
    apps.refused(lambda: apps.b.responses.cancel(first.id))
    apps.refused(lambda: apps.b.responses.delete(first.id))
    apps.refused(
        lambda: apps.b.responses.create(
            model="gpt-4o-mini", input="x", previous_response_id=first.id
        )
    )
    owners = owners_own(apps.live, "response", status="completed", output=[])
    apps.refused(lambda: apps.a.responses.retrieve(owners))
    # A streamed response is recorded from its first event, before the app sees the id.
    events = list(apps.a.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    streamed = events[-1].response  # type: ignore[union-attr]
    assert apps.a.responses.retrieve(streamed.id).id == streamed.id
    apps.refused(lambda: apps.b.responses.retrieve(streamed.id))
    # Not stored: nothing to name later, nothing recorded.
    unstored = apps.a.responses.create(model="gpt-4o-mini", input="hi", store=False)
    apps.refused(lambda: apps.a.responses.retrieve(unstored.id))


def test_stored_chat_completions(apps: Apps) -> None:
    text = [{"role": "user", "content": "hi"}]
    stored = apps.a.chat.completions.create(model="gpt-4o-mini", messages=text, store=True)  # type: ignore[arg-type]
    owners = owners_own(apps.live, "chat.completion", model="gpt-4o-mini", choices=[])
    assert [c.id for c in apps.a.chat.completions.list()] == [stored.id]
    assert [c.id for c in apps.b.chat.completions.list()] == []
    assert apps.a.chat.completions.retrieve(stored.id).id == stored.id
    assert len(apps.a.chat.completions.messages.list(stored.id).data) == 1
    apps.refused(lambda: apps.b.chat.completions.retrieve(stored.id))
    apps.refused(lambda: apps.b.chat.completions.messages.list(stored.id))
    apps.refused(lambda: apps.b.chat.completions.update(stored.id, metadata={"a": "b"}))
    apps.refused(lambda: apps.b.chat.completions.delete(stored.id))
    apps.refused(lambda: apps.a.chat.completions.retrieve(owners))
    # A streamed stored completion is recorded from its first chunk.
    chunks = list(
        apps.a.chat.completions.create(
            model="gpt-4o-mini",
            messages=text,  # type: ignore[arg-type]
            store=True,
            stream=True,
        )
    )
    assert apps.a.chat.completions.retrieve(chunks[0].id).id == chunks[0].id
    assert apps.a.chat.completions.delete(stored.id).deleted


def test_vector_stores(apps: Apps) -> None:
    file = apps.a.files.create(file=("a.txt", b"text"), purpose="assistants").id
    store = apps.a.vector_stores.create(name="a", file_ids=[file]).id
    other = apps.b.files.create(file=("b.txt", b"text"), purpose="assistants").id
    assert [v.id for v in apps.a.vector_stores.list()] == [store]
    assert [v.id for v in apps.b.vector_stores.list()] == []
    assert apps.a.vector_stores.files.retrieve(file, vector_store_id=store).id == file
    apps.refused(lambda: apps.b.vector_stores.retrieve(store))
    apps.refused(lambda: apps.b.vector_stores.search(store, query="q"))
    apps.refused(lambda: apps.b.vector_stores.files.list(store))
    apps.refused(lambda: apps.b.vector_stores.files.create(vector_store_id=store, file_id=other))
    apps.refused(lambda: apps.b.vector_stores.delete(store))
    apps.refused(lambda: apps.b.vector_stores.create(name="b", file_ids=[file]))
    apps.refused(lambda: apps.a.vector_stores.files.create(vector_store_id=store, file_id=other))
    apps.refused(
        lambda: apps.b.responses.create(
            model="gpt-4o-mini",
            input="q",
            tools=[{"type": "file_search", "vector_store_ids": [store]}],
        )
    )
    apps.a.responses.create(
        model="gpt-4o-mini", input="q", tools=[{"type": "file_search", "vector_store_ids": [store]}]
    )
    apps.refused(  # a file named inside a message's content counts too
        lambda: apps.b.responses.create(
            model="gpt-4o-mini",
            input=[{"role": "user", "content": [{"type": "input_file", "file_id": file}]}],
        )
    )


def test_batches(apps: Apps) -> None:
    file = apps.a.files.create(file=("a.jsonl", BATCH_LINE), purpose="batch").id
    batch = apps.a.batches.create(
        input_file_id=file, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    assert [b.id for b in apps.a.batches.list()] == [batch]
    assert [b.id for b in apps.b.batches.list()] == []
    apps.refused(lambda: apps.b.batches.retrieve(batch))
    apps.refused(lambda: apps.b.batches.cancel(batch))
    apps.refused(
        lambda: apps.b.batches.create(
            input_file_id=file, endpoint="/v1/chat/completions", completion_window="24h"
        )
    )
    # The batch completes upstream: its output file becomes the app's when the app reads it.
    output = owners_own(apps.live, "file", filename="out", purpose="batch_output", bytes=1)
    apps.live.upstream.objects.by_id[batch].update(status="completed", output_file_id=output)
    apps.refused(lambda: apps.a.files.content(output))  # not known before the batch is read
    assert apps.a.batches.retrieve(batch).output_file_id == output
    assert apps.a.files.content(output).read() == BATCH_LINE
    apps.refused(lambda: apps.b.files.content(output))


def test_fine_tuning_jobs(apps: Apps) -> None:
    file = apps.a.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune").id
    job = apps.a.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file).id
    assert [j.id for j in apps.a.fine_tuning.jobs.list()] == [job]
    apps.refused(lambda: apps.b.fine_tuning.jobs.retrieve(job))
    apps.refused(lambda: apps.b.fine_tuning.jobs.cancel(job))
    apps.refused(lambda: apps.b.fine_tuning.jobs.list_events(job))
    apps.refused(lambda: apps.b.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file))


def test_conversations(apps: Apps) -> None:
    conv = apps.a.conversations.create(items=[{"role": "user", "content": "hi"}]).id  # type: ignore[list-item]
    assert apps.a.conversations.retrieve(conv).id == conv
    item = apps.a.conversations.items.list(conv).data[0].id
    apps.refused(lambda: apps.b.conversations.retrieve(conv))
    apps.refused(lambda: apps.b.conversations.items.list(conv))
    apps.refused(lambda: apps.b.conversations.items.retrieve(item, conversation_id=conv))
    apps.refused(lambda: apps.b.conversations.delete(conv))
    apps.refused(lambda: apps.b.responses.create(model="gpt-4o-mini", input="x", conversation=conv))
    apps.refused(
        lambda: apps.b.responses.create(model="gpt-4o-mini", input="x", conversation={"id": conv})
    )
    apps.a.responses.create(model="gpt-4o-mini", input="x", conversation=conv)
    owners = owners_own(apps.live, "conversation", metadata={})
    apps.refused(lambda: apps.a.conversations.retrieve(owners))


def test_an_escaped_key_still_names_an_object(apps: Apps) -> None:
    mine = apps.a.files.create(file=("a.txt", b"x"), purpose="assistants").id
    body = json.dumps({"name": "v", "file_ids": [mine]}).replace("file_ids", "file\\u005fids")
    before = len(apps.live.upstream.seen)
    response = httpx.post(
        f"{apps.live.url}/v1/vector_stores",
        content=body.encode(),
        headers={"authorization": f"Bearer {apps.b_token}", "content-type": "application/json"},
    )
    assert response.status_code == 404
    assert len(apps.live.upstream.seen) == before


def test_sdk_auto_pagination_over_a_filtered_list(live: Live) -> None:
    web, authn = live.owner()
    token = live.grant_for(web, authn, scopes=["files"], rpm="2000")
    sdk = live.client(token)
    others = live.client(live.grant_for(web, authn, scopes=["files"]))
    mine: list[str] = []
    for i in range(1250):  # 250 of the grant's own among 1,000 others, interleaved
        if i % 5 == 2:
            mine.append(sdk.files.create(file=(f"{i}.txt", b"x"), purpose="assistants").id)
        else:
            owners_own(live, "file", filename=f"{i}", purpose="assistants", bytes=1)
    newest_first = list(reversed(mine))
    assert [f.id for f in sdk.files.list(limit=20)] == newest_first  # 13 pages of 20
    assert [f.id for f in sdk.files.list(limit=100, order="asc")] == mine
    assert [f.id for f in sdk.files.list()] == newest_first
    first = sdk.files.list(limit=7)
    assert [f.id for f in first.data] == newest_first[:7]
    assert first.has_more
    assert [f.id for f in others.files.list()] == []


def test_named_ids_are_read_from_path_cursor_and_body() -> None:
    from keybroker.proxy import policy, scopes

    found = scopes.match("GET", "/files")
    assert found is not None
    decision = policy.Decision(found.route, found.params, policy.BodyFacts())
    assert ownership.named(decision, b"after=file-9&limit=3") == [("file", "file-9")]
    fields = {
        "conversation": {"id": "conv_1"},
        "tools": [{"type": "file_search", "vector_store_ids": ["vs_1", "vs_2"]}],
        "input": [{"content": [{"type": "input_file", "file_id": "file-1"}]}],
        "metadata": {"file_id": "not an id"},
        "previous_response_id": "resp_1",
        "more": [{"type": "code_interpreter", "container": "cntr_1"}],
        "auto": [{"type": "code_interpreter", "container": {"type": "auto"}}],
    }
    body = json.dumps(fields).encode()
    assert set(ownership.body_references(body, fields)) == {
        ("conversation", "conv_1"),
        ("vector_store", "vs_1"),
        ("vector_store", "vs_2"),
        ("file", "file-1"),
        ("response", "resp_1"),
        ("container", "cntr_1"),  # no grant owns a container: a named one is refused
    }
    assert ownership.body_references(b'{"model": "m"}', {"model": "m"}) == ()


def test_settings_counts_objects_and_revoke_deletes_them(live: Live) -> None:
    from keybroker.crypto import tokens
    from tests.helpers import SAME_ORIGIN

    web, authn = live.owner()
    token = live.grant_for(web, authn, scopes=["chat", "files"])
    keeps = live.client(live.grant_for(web, authn, scopes=["files"]))
    sdk = live.client(token)
    made = [sdk.files.create(file=(f"{i}.txt", b"x"), purpose="assistants").id for i in range(2)]
    made.append(sdk.vector_stores.create(name="v", file_ids=made[:1]).id)
    made.append(sdk.responses.create(model="gpt-4o-mini", input="hi").id)
    other = keeps.files.create(file=("k.txt", b"x"), purpose="assistants").id
    owners = owners_own(live, "file", filename="o", purpose="assistants", bytes=1)
    grant_id = tokens.parse_token(token).grant_id
    page = web.get("/settings").text
    assert '<dd class="objects">4 ' in page
    assert f'action="/settings/grants/{grant_id}/revoke-and-delete"' in page
    done = web.post(f"/settings/grants/{grant_id}/revoke-and-delete", headers=SAME_ORIGIN)
    assert done.status_code == 200
    assert "4 of its objects deleted" in done.text
    assert all(obj not in live.upstream.objects.by_id for obj in made)
    assert other in live.upstream.objects.by_id  # another app's file stays
    assert owners in live.upstream.objects.by_id  # and so does the owner's own
    with pytest.raises(openai.AuthenticationError):
        sdk.files.list()


def test_a_named_container_is_refused(apps: Apps) -> None:
    apps.refused(
        lambda: apps.a.responses.create(
            model="gpt-4o-mini",
            input="x",
            tools=[{"type": "code_interpreter", "container": "cntr_someone"}],
        )
    )
    apps.a.responses.create(
        model="gpt-4o-mini",
        input="x",
        tools=[{"type": "code_interpreter", "container": {"type": "auto"}}],
    )
