"""The object endpoints of the mock OpenAI API: files, uploads, vector stores, batches,
fine-tuning jobs, stored chat completions, responses and conversations, kept in memory with
OpenAI's list pagination (``limit``, ``after``, ``order``, ``has_more``, ``first_id``,
``last_id``). One account's objects: whoever holds the key sees them all, as at OpenAI, so the
proxy alone must keep grants apart.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

PREFIX = {
    "file": "file-",
    "upload": "upload_",
    "vector_store": "vs_",
    "vector_store.file_batch": "vsfb_",
    "batch": "batch_",
    "fine_tuning.job": "ftjob-",
    "chat.completion": "chatcmpl-",
    "response": "resp_",
    "conversation": "conv_",
    "conversation.item": "msg_",
}


@dataclass
class Objects:
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    content: dict[str, bytes] = field(default_factory=dict)  # file id -> its bytes
    children: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # parent -> items
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    clock: itertools.count[int] = field(default_factory=lambda: itertools.count(1_700_000_000))

    def new_id(self, kind: str) -> str:
        return f"{PREFIX[kind]}{next(self.counter):06d}"

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        obj = {"id": self.new_id(kind), "object": kind, "created_at": next(self.clock), **fields}
        self.by_id[obj["id"]] = obj
        return obj

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.by_id.values() if o["object"] == kind]


def not_found(what: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "message": f"No such {what}",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
        status_code=404,
    )


def page(items: list[dict[str, Any]], request: Request, default_limit: int = 20) -> JSONResponse:
    """A cursor page as OpenAI's list endpoints answer (newest first unless order=asc)."""
    query = request.query_params
    order = query.get("order", "desc")
    ordered = sorted(items, key=lambda o: (o.get("created_at", 0), o["id"]))
    if order == "desc":
        ordered.reverse()
    after = query.get("after")
    if after is not None:
        ids = [o["id"] for o in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    limit = int(query.get("limit", default_limit))
    chosen = ordered[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": chosen,
            "first_id": chosen[0]["id"] if chosen else None,
            "last_id": chosen[-1]["id"] if chosen else None,
            "has_more": len(ordered) > limit,
        }
    )


def deleted(obj_id: str, kind: str) -> JSONResponse:
    return JSONResponse({"id": obj_id, "object": kind, "deleted": True})


Handler = Callable[[Request, "Objects", dict[str, str], bytes], Awaitable[Response]]


async def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


async def _form(request: Request, body: bytes) -> dict[str, Any]:
    from keybroker.proxy import framing

    kind = framing.body_type(request.headers.get("content-type", "").encode())
    fields: dict[str, Any] = {}
    for part in framing.multipart_parts(body, kind):
        fields[part.name] = part.data if part.filename is not None else part.data.decode()
        if part.filename is not None:
            fields["filename"] = part.filename
    return fields


def build_routes(objects: Objects) -> list[tuple[str, re.Pattern[str], Handler]]:
    routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def route(method: str, template: str) -> Callable[[Handler], Handler]:
        pattern = re.compile("^/v1" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")

        def register(handler: Handler) -> Handler:
            routes.append((method, pattern, handler))
            return handler

        return register

    def get_or_404(kind: str, obj_id: str) -> dict[str, Any] | None:
        obj = objects.by_id.get(obj_id)
        return obj if obj is not None and obj["object"] == kind else None

    def crud(kind: str, base: str, param: str, deleted_kind: str) -> None:
        @route("GET", f"{base}/{{{param}}}")
        async def get_one(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
            obj = get_or_404(kind, p[param])
            return JSONResponse(obj) if obj else not_found(kind)

        @route("DELETE", f"{base}/{{{param}}}")
        async def delete(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
            if get_or_404(kind, p[param]) is None:
                return not_found(kind)
            del o.by_id[p[param]]
            return deleted(p[param], deleted_kind)

    def status_action(kind: str, base: str, param: str, action: str, status: str) -> None:
        """POST {base}/{param}/{action}: the object with its status changed."""

        async def act(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
            obj = get_or_404(kind, p[param])
            if obj is None:
                return not_found(kind)
            obj["status"] = status
            return JSONResponse(obj)

        route("POST", f"{base}/{{{param}}}/{action}")(act)

    status_action("upload", "/uploads", "upload_id", "cancel", "cancelled")
    status_action(
        "vector_store.file_batch",
        "/vector_stores/{vector_store_id}/file_batches",
        "file_batch_id",
        "cancel",
        "cancelled",
    )
    status_action("batch", "/batches", "batch_id", "cancel", "cancelling")
    status_action("response", "/responses", "response_id", "cancel", "cancelled")

    # Files and uploads.
    @route("POST", "/files")
    async def create_file(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        form = await _form(request, b)
        data = form.get("file", b"")
        obj = o.add(
            "file",
            bytes=len(data),
            filename=form.get("filename", ""),
            purpose=form.get("purpose", ""),
            status="processed",
        )
        o.content[obj["id"]] = data
        return JSONResponse(obj)

    @route("GET", "/files")
    async def list_files(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        purpose = request.query_params.get("purpose")
        items = [f for f in o.of_kind("file") if purpose is None or f["purpose"] == purpose]
        return page(items, request, default_limit=10_000)

    crud("file", "/files", "file_id", "file")

    @route("GET", "/files/{file_id}/content")
    async def file_content(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        if p["file_id"] not in o.content:
            return not_found("file")
        return Response(o.content[p["file_id"]], media_type="application/octet-stream")

    @route("POST", "/uploads")
    async def create_upload(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        body = await _json(b)
        obj = o.add(
            "upload",
            bytes=body.get("bytes", 0),
            filename=body.get("filename", ""),
            purpose=body.get("purpose", ""),
            status="pending",
            expires_at=2_000_000_000,
        )
        o.children[obj["id"]] = []
        return JSONResponse(obj)

    @route("POST", "/uploads/{upload_id}/parts")
    async def add_part(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        if get_or_404("upload", p["upload_id"]) is None:
            return not_found("upload")
        form = await _form(request, b)
        part = {
            "id": f"part_{next(o.counter):06d}",
            "object": "upload.part",
            "created_at": next(o.clock),
            "upload_id": p["upload_id"],
            "data": form.get("data", b""),
        }
        o.children[p["upload_id"]].append(part)
        return JSONResponse({k: v for k, v in part.items() if k != "data"})

    @route("POST", "/uploads/{upload_id}/complete")
    async def complete(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        upload = get_or_404("upload", p["upload_id"])
        if upload is None:
            return not_found("upload")
        data = b"".join(part["data"] for part in o.children[p["upload_id"]])
        file = o.add(
            "file",
            bytes=len(data),
            filename=upload["filename"],
            purpose=upload["purpose"],
            status="processed",
        )
        o.content[file["id"]] = data
        upload.update(status="completed", file=file)
        return JSONResponse(upload)

    # Vector stores.
    @route("POST", "/vector_stores")
    async def create_store(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        body = await _json(b)
        obj = o.add(
            "vector_store",
            name=body.get("name"),
            status="completed",
            usage_bytes=0,
            file_counts={"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0},
            metadata=body.get("metadata") or {},
            last_active_at=None,
        )
        o.children[obj["id"]] = []
        for file_id in body.get("file_ids") or []:
            o.children[obj["id"]].append(_store_file(o, obj["id"], file_id))
        return JSONResponse(obj)

    @route("GET", "/vector_stores")
    async def list_stores(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        return page(o.of_kind("vector_store"), request)

    crud("vector_store", "/vector_stores", "vector_store_id", "vector_store.deleted")

    @route("POST", "/vector_stores/{vector_store_id}")
    async def update_store(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        store = get_or_404("vector_store", p["vector_store_id"])
        if store is None:
            return not_found("vector store")
        store.update({k: v for k, v in (await _json(b)).items() if k in ("name", "metadata")})
        return JSONResponse(store)

    @route("POST", "/vector_stores/{vector_store_id}/search")
    async def search(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        if get_or_404("vector_store", p["vector_store_id"]) is None:
            return not_found("vector store")
        return JSONResponse(
            {
                "object": "vector_store.search_results.page",
                "search_query": [str((await _json(b)).get("query"))],
                "data": [],
                "has_more": False,
                "next_page": None,
            }
        )

    def _store_file(o: Objects, store_id: str, file_id: str) -> dict[str, Any]:
        return {
            "id": file_id,
            "object": "vector_store.file",
            "created_at": next(o.clock),
            "vector_store_id": store_id,
            "status": "completed",
            "usage_bytes": 0,
            "last_error": None,
            "attributes": {},
        }

    def store_files(store_id: str) -> list[dict[str, Any]] | None:
        if get_or_404("vector_store", store_id) is None:
            return None
        return objects.children[store_id]

    @route("POST", "/vector_stores/{vector_store_id}/files")
    async def attach(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        files = store_files(p["vector_store_id"])
        if files is None:
            return not_found("vector store")
        item = _store_file(o, p["vector_store_id"], str((await _json(b)).get("file_id")))
        files.append(item)
        return JSONResponse(item)

    @route("GET", "/vector_stores/{vector_store_id}/files")
    async def store_list(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        files = store_files(p["vector_store_id"])
        return not_found("vector store") if files is None else page(files, request)

    def store_file(p: dict[str, str]) -> dict[str, Any] | None:
        files = store_files(p["vector_store_id"]) or []
        return next((f for f in files if f["id"] == p["file_id"]), None)

    @route("GET", "/vector_stores/{vector_store_id}/files/{file_id}")
    async def store_get(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        item = store_file(p)
        return JSONResponse(item) if item else not_found("vector store file")

    @route("POST", "/vector_stores/{vector_store_id}/files/{file_id}")
    async def store_update(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        item = store_file(p)
        if item is None:
            return not_found("vector store file")
        item["attributes"] = (await _json(b)).get("attributes") or {}
        return JSONResponse(item)

    @route("DELETE", "/vector_stores/{vector_store_id}/files/{file_id}")
    async def store_detach(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        item = store_file(p)
        if item is None:
            return not_found("vector store file")
        o.children[p["vector_store_id"]].remove(item)
        return deleted(p["file_id"], "vector_store.file.deleted")

    @route("GET", "/vector_stores/{vector_store_id}/files/{file_id}/content")
    async def store_content(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        if store_file(p) is None:
            return not_found("vector store file")
        text = o.content.get(p["file_id"], b"").decode("utf-8", "replace")
        return JSONResponse(
            {
                "object": "vector_store.file_content.page",
                "data": [{"type": "text", "text": text}],
                "has_more": False,
                "next_page": None,
            }
        )

    @route("POST", "/vector_stores/{vector_store_id}/file_batches")
    async def file_batch(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        files = store_files(p["vector_store_id"])
        if files is None:
            return not_found("vector store")
        ids = (await _json(b)).get("file_ids") or []
        batch = o.add(
            "vector_store.file_batch",
            vector_store_id=p["vector_store_id"],
            status="completed",
            file_counts={
                "in_progress": 0,
                "completed": len(ids),
                "failed": 0,
                "cancelled": 0,
                "total": len(ids),
            },
        )
        o.children[batch["id"]] = [_store_file(o, p["vector_store_id"], i) for i in ids]
        files.extend(o.children[batch["id"]])
        return JSONResponse(batch)

    @route("GET", "/vector_stores/{vector_store_id}/file_batches/{file_batch_id}")
    async def get_fb(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        batch = get_or_404("vector_store.file_batch", p["file_batch_id"])
        return JSONResponse(batch) if batch else not_found("file batch")

    @route("GET", "/vector_stores/{vector_store_id}/file_batches/{file_batch_id}/files")
    async def fb_files(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        if get_or_404("vector_store.file_batch", p["file_batch_id"]) is None:
            return not_found("file batch")
        return page(o.children[p["file_batch_id"]], request)

    # Batches and fine-tuning jobs.
    @route("POST", "/batches")
    async def create_batch(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        body = await _json(b)
        if body.get("input_file_id") not in o.content:
            return not_found("file")
        return JSONResponse(
            o.add(
                "batch",
                endpoint=body.get("endpoint"),
                input_file_id=body.get("input_file_id"),
                completion_window=body.get("completion_window"),
                status="validating",
                output_file_id=None,
                error_file_id=None,
            )
        )

    @route("GET", "/batches")
    async def list_batches(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        return page(o.of_kind("batch"), request)

    @route("GET", "/batches/{batch_id}")
    async def get_batch(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        batch = get_or_404("batch", p["batch_id"])
        return JSONResponse(batch) if batch else not_found("batch")

    @route("POST", "/fine_tuning/jobs")
    async def create_job(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        body = await _json(b)
        return JSONResponse(
            o.add(
                "fine_tuning.job",
                model=body.get("model"),
                training_file=body.get("training_file"),
                validation_file=body.get("validation_file"),
                status="queued",
                fine_tuned_model=None,
                finished_at=None,
                error=None,
                hyperparameters={"n_epochs": "auto"},
                organization_id="org-owner",
                result_files=[],
                seed=1,
                trained_tokens=None,
            )
        )

    @route("GET", "/fine_tuning/jobs")
    async def list_jobs(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        return page(o.of_kind("fine_tuning.job"), request)

    @route("GET", "/fine_tuning/jobs/{fine_tuning_job_id}")
    async def get_job(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        job = get_or_404("fine_tuning.job", p["fine_tuning_job_id"])
        return JSONResponse(job) if job else not_found("job")

    for action, status in (("cancel", "cancelled"), ("pause", "paused"), ("resume", "running")):
        status_action("fine_tuning.job", "/fine_tuning/jobs", "fine_tuning_job_id", action, status)

    for sub in ("events", "checkpoints"):

        async def job_list(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
            if get_or_404("fine_tuning.job", p["fine_tuning_job_id"]) is None:
                return not_found("job")
            return page([], request)

        route("GET", f"/fine_tuning/jobs/{{fine_tuning_job_id}}/{sub}")(job_list)

    # Stored chat completions.
    @route("GET", "/chat/completions")
    async def list_chats(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        return page(o.of_kind("chat.completion"), request)

    crud("chat.completion", "/chat/completions", "completion_id", "chat.completion.deleted")

    @route("POST", "/chat/completions/{completion_id}")
    async def update_chat(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        chat = get_or_404("chat.completion", p["completion_id"])
        if chat is None:
            return not_found("chat completion")
        chat["metadata"] = (await _json(b)).get("metadata") or {}
        return JSONResponse(chat)

    @route("GET", "/chat/completions/{completion_id}/messages")
    async def chat_messages(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        if get_or_404("chat.completion", p["completion_id"]) is None:
            return not_found("chat completion")
        return page(o.children.get(p["completion_id"], []), request)

    # Responses (their creation is the responses route in tests/upstream.py).
    crud("response", "/responses", "response_id", "response")

    @route("GET", "/responses/{response_id}/input_items")
    async def input_items(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        if get_or_404("response", p["response_id"]) is None:
            return not_found("response")
        return page(o.children.get(p["response_id"], []), request)

    @route("POST", "/responses/input_tokens")
    async def input_tokens(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        return JSONResponse({"object": "response.input_tokens", "input_tokens": 5})

    @route("POST", "/responses/compact")
    async def compact(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        return JSONResponse(
            {
                "id": "cmp_1",
                "object": "response.compaction",
                "created_at": 1,
                "output": [],
                "usage": {
                    "input_tokens": 5,
                    "output_tokens": 1,
                    "total_tokens": 6,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens_details": {"reasoning_tokens": 0},
                },
            }
        )

    # Conversations and their items.
    def conversation_item(o: Objects, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": o.new_id("conversation.item"),
            "type": "message",
            "status": "completed",
            "role": item.get("role", "user"),
            "content": [{"type": "input_text", "text": str(item.get("content", ""))}],
        }

    @route("POST", "/conversations")
    async def create_conv(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        body = await _json(b)
        conv = o.add("conversation", metadata=body.get("metadata") or {})
        o.children[conv["id"]] = [conversation_item(o, i) for i in body.get("items") or []]
        return JSONResponse(conv)

    crud("conversation", "/conversations", "conversation_id", "conversation.deleted")

    @route("POST", "/conversations/{conversation_id}")
    async def update_conv(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        conv = get_or_404("conversation", p["conversation_id"])
        if conv is None:
            return not_found("conversation")
        conv["metadata"] = (await _json(b)).get("metadata") or {}
        return JSONResponse(conv)

    @route("GET", "/conversations/{conversation_id}/items")
    async def conv_items(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        if get_or_404("conversation", p["conversation_id"]) is None:
            return not_found("conversation")
        return page(o.children[p["conversation_id"]], request)

    @route("POST", "/conversations/{conversation_id}/items")
    async def add_items(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        if get_or_404("conversation", p["conversation_id"]) is None:
            return not_found("conversation")
        added = [conversation_item(o, i) for i in (await _json(b)).get("items") or []]
        o.children[p["conversation_id"]].extend(added)
        return JSONResponse(
            {
                "object": "list",
                "data": added,
                "first_id": added[0]["id"] if added else None,
                "last_id": added[-1]["id"] if added else None,
                "has_more": False,
            }
        )

    def conv_item(p: dict[str, str]) -> dict[str, Any] | None:
        items = objects.children.get(p["conversation_id"], [])
        return next((i for i in items if i["id"] == p["item_id"]), None)

    @route("GET", "/conversations/{conversation_id}/items/{item_id}")
    async def get_item(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        item = conv_item(p)
        return JSONResponse(item) if item else not_found("item")

    @route("DELETE", "/conversations/{conversation_id}/items/{item_id}")
    async def del_item(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        item = conv_item(p)
        if item is None:
            return not_found("item")
        o.children[p["conversation_id"]].remove(item)
        return JSONResponse(o.by_id[p["conversation_id"]])

    # Read-only models, and the generation endpoints the main module does not answer.
    @route("GET", "/models/{model}")
    async def get_model(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        return JSONResponse(
            {"id": p["model"], "object": "model", "created": 1, "owned_by": "openai"}
        )

    for template in ("/images/edits", "/images/variations"):

        async def image(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
            return JSONResponse({"created": 1, "data": [{"b64_json": "aGVsbG8="}]})

        route("POST", template)(image)

    @route("POST", "/audio/translations")
    async def translate(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        return JSONResponse({"text": "translated"})

    @route("POST", "/completions")
    async def completions(request: Request, o: Objects, p: dict[str, str], b: bytes) -> Response:
        body = await _json(b)
        return JSONResponse(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": body.get("model"),
                "choices": [{"index": 0, "text": "ok", "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
            }
        )

    return routes
