"""Objects belong to the grant that made them.

Every object a grant creates through the proxy (files, uploads, vector stores, batches,
fine-tuning jobs, responses, stored chat completions, conversations) is recorded with its id
and its grant. A request that names an id, in its path, its list cursor or its body, is
forwarded only if this grant owns that object; otherwise it is 404, as if the object did not
exist, so another app's objects and the owner's own (made outside keybroker) stay invisible.
The tables below say, as data, where ids appear; the Ownership store reads and writes rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import Engine, delete, func, select
from sqlmodel import Session, col

from keybroker.models import Grant, OwnedObject
from keybroker.proxy.policy import Decision, Refused

Named = tuple[str, str]  # (kind, object id)

# Path template parameters that are ids of objects a grant must own (proxy/scopes.py).
# Others ({model}, {item_id}, {file_batch_id}) live under an owned parent or are public.
PARAM_KINDS = {
    "completion_id": "chat.completion",
    "response_id": "response",
    "conversation_id": "conversation",
    "file_id": "file",
    "upload_id": "upload",
    "vector_store_id": "vector_store",
    "batch_id": "batch",
    "fine_tuning_job_id": "fine_tuning.job",
}

# Keys whose string values (or lists of strings) in a JSON body name an object. Values under
# "metadata" are the app's own text and are not read as references.
REFERENCES = {
    "previous_response_id": "response",
    "conversation": "conversation",
    "file_id": "file",
    "file_ids": "file",
    "input_file_id": "file",
    "training_file": "file",
    "validation_file": "file",
    "vector_store_ids": "vector_store",
    "vector_store_id": "vector_store",
    # A code interpreter container named by id: containers are not a listed scope, so no
    # grant owns one and a named container is refused ({"type": "auto"} is fine).
    "container": "container",
}
_MARKERS = (*(key.encode() for key in REFERENCES), b"\\u")


@dataclass(frozen=True)
class Creates:
    kind: str
    path: tuple[str, ...] = ("id",)  # where the new id is in the answer
    # For objects the body's "store" flag decides on: what OpenAI does when it is absent
    # (None: always made). An object not stored cannot be named later: nothing to record.
    store_default: bool | None = None


# Answers of these pairs carry the id of an object the request made.
CREATES: dict[tuple[str, str], Creates] = {
    ("POST", "/files"): Creates("file"),
    ("POST", "/uploads"): Creates("upload"),
    ("POST", "/uploads/{upload_id}/complete"): Creates("file", ("file", "id")),
    ("POST", "/vector_stores"): Creates("vector_store"),
    ("POST", "/batches"): Creates("batch"),
    ("POST", "/fine_tuning/jobs"): Creates("fine_tuning.job"),
    ("POST", "/conversations"): Creates("conversation"),
    ("POST", "/responses"): Creates("response", store_default=True),
    ("POST", "/chat/completions"): Creates("chat.completion", store_default=False),
}
# Objects OpenAI makes for an owned one (a batch's output and error files, a fine-tuning
# job's result files) become the grant's when an answer about the owned object names them.
CHILDREN: dict[str, tuple[tuple[str, str], ...]] = {
    "batch": (("output_file_id", "file"), ("error_file_id", "file")),
    "fine_tuning.job": (("result_files", "file"),),
}
# List endpoints whose answers are filtered to the grant's own objects.
LISTS: dict[tuple[str, str], str] = {
    ("GET", "/files"): "file",
    ("GET", "/vector_stores"): "vector_store",
    ("GET", "/batches"): "batch",
    ("GET", "/fine_tuning/jobs"): "fine_tuning.job",
    ("GET", "/chat/completions"): "chat.completion",
}
# Deleting these (the object itself, not a link to it) ends the grant's record of it.
DELETES: dict[tuple[str, str], str] = {
    ("DELETE", "/files/{file_id}"): "file_id",
    ("DELETE", "/vector_stores/{vector_store_id}"): "vector_store_id",
    ("DELETE", "/responses/{response_id}"): "response_id",
    ("DELETE", "/chat/completions/{completion_id}"): "completion_id",
    ("DELETE", "/conversations/{conversation_id}"): "conversation_id",
}


def not_found(object_id: str) -> Refused:
    # As OpenAI answers an id it does not know: the app cannot tell "not yours" from "none".
    return Refused(
        404, f"No such object: '{object_id[:200]}'", "invalid_request_error", "not_found"
    )


def _walk(value: Any) -> Iterator[Named]:
    if isinstance(value, dict):
        for key, inner in value.items():
            kind = REFERENCES.get(key)
            if kind is not None:
                if isinstance(inner, str):
                    yield kind, inner
                elif isinstance(inner, list):
                    yield from ((kind, v) for v in inner if isinstance(v, str))
                elif isinstance(inner, dict) and isinstance(inner.get("id"), str):
                    yield kind, inner["id"]  # "conversation": {"id": ...}
            if key != "metadata":
                yield from _walk(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _walk(inner)


def body_references(body: bytes, fields: dict[str, Any]) -> tuple[Named, ...]:
    """The (kind, id) of every object a JSON body names, at any depth."""
    if not any(marker in body for marker in _MARKERS):
        return ()  # no key that names an object (an escape could spell one: then walk)
    return tuple(dict.fromkeys(_walk(fields)))


def named(decision: Decision, query: bytes) -> list[Named]:
    """Every object this request names: path ids, a list's cursor, the body's references."""
    out = [(PARAM_KINDS[name], value) for name, value in decision.params if name in PARAM_KINDS]
    kind = LISTS.get((decision.route.method, decision.route.template))
    if kind is not None and query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if name in ("after", "before"):
                out.append((kind, value))
    out.extend(decision.facts.references)
    return out


def _dig(answer: Any, path: Iterable[str]) -> Any:
    for step in path:
        answer = answer.get(step) if isinstance(answer, dict) else None
    return answer


def _children(kind: str, obj: Any) -> Iterator[Named]:
    for field, child in CHILDREN.get(kind, ()):
        value = obj.get(field) if isinstance(obj, dict) else None
        values = value if isinstance(value, list) else [value]
        yield from ((child, v) for v in values if isinstance(v, str) and v)


def children_of(kind: str, obj: Any) -> list[Named]:
    """Objects OpenAI made for an owned object that a listing shows."""
    return list(_children(kind, obj))


def recorder_for(decision: Decision) -> str | None:
    """The kind whose ids this request's answer may give the grant, if any."""
    key = (decision.route.method, decision.route.template)
    creates = CREATES.get(key)
    if creates is not None:
        if creates.store_default is None:
            return creates.kind
        store = decision.facts.store
        stored = creates.store_default if store is None else store
        return creates.kind if stored else None
    last = decision.route.parts[-1] if decision.route.parts else ""
    for name, _ in decision.params:
        kind = PARAM_KINDS.get(name)
        if kind in CHILDREN and last in ("{" + name + "}", "cancel", "pause", "resume"):
            return kind
    return None


def created(decision: Decision, answer: Any) -> list[Named]:
    """The objects an answer gives this grant: the one it made, and their children."""
    key = (decision.route.method, decision.route.template)
    creates = CREATES.get(key)
    out: list[Named] = []
    if creates is not None:
        new_id = _dig(answer, creates.path)
        if isinstance(new_id, str) and new_id:
            out.append((creates.kind, new_id))
            made = _dig(answer, creates.path[:-1]) if len(creates.path) > 1 else answer
            out.extend(_children(creates.kind, made))
    else:
        kind = recorder_for(decision)
        if kind is not None:
            out.extend(_children(kind, answer))
    return out


def event_created(decision: Decision, event: bytes) -> list[Named]:
    """Objects a streamed answer's event gives this grant (its ``response`` or first chunk)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                data = json.loads(line[5:])
            except ValueError:
                return []
            if isinstance(data, dict) and isinstance(data.get("response"), dict):
                data = data["response"]  # Responses: response.created carries the object
            return created(decision, data)
    return []


class Ownership:
    """The owned_objects table. Methods are blocking: call them from a thread pool."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def missing(self, grant_id: str, wanted: list[Named]) -> list[str]:
        """Ids among ``wanted`` that this grant does not own as that kind."""
        ids = {object_id for _, object_id in wanted}
        with Session(self.engine) as db:
            rows = db.execute(
                select(col(OwnedObject.object_id), col(OwnedObject.kind)).where(
                    col(OwnedObject.grant_id) == grant_id, col(OwnedObject.object_id).in_(ids)
                )
            ).all()
        have = {(kind, object_id) for object_id, kind in rows}
        return [object_id for kind, object_id in wanted if (kind, object_id) not in have]

    def owned_among(self, grant_id: str, kind: str, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        with Session(self.engine) as db:
            return set(
                db.execute(
                    select(col(OwnedObject.object_id)).where(
                        col(OwnedObject.grant_id) == grant_id,
                        col(OwnedObject.kind) == kind,
                        col(OwnedObject.object_id).in_(ids),
                    )
                ).scalars()
            )

    def record(self, grant_id: str, objects: list[Named]) -> None:
        fresh = dict((object_id, kind) for kind, object_id in objects if len(object_id) <= 200)
        with Session(self.engine) as db:
            known = set(
                db.execute(
                    select(col(OwnedObject.object_id)).where(
                        col(OwnedObject.grant_id) == grant_id,
                        col(OwnedObject.object_id).in_(fresh),
                    )
                ).scalars()
            )
            for object_id, kind in fresh.items():
                if object_id not in known:
                    db.add(OwnedObject(grant_id=grant_id, object_id=object_id, kind=kind))
            db.commit()

    def forget(self, grant_id: str, object_id: str) -> None:
        with Session(self.engine) as db:
            db.execute(
                delete(OwnedObject).where(
                    col(OwnedObject.grant_id) == grant_id, col(OwnedObject.object_id) == object_id
                )
            )
            db.commit()

    def has_any(self, grant_id: str, kind: str) -> bool:
        with Session(self.engine) as db:
            found = db.execute(
                select(col(OwnedObject.object_id))
                .where(col(OwnedObject.grant_id) == grant_id, col(OwnedObject.kind) == kind)
                .limit(1)
            ).first()
        return found is not None

    def of_grant(self, grant_id: str) -> list[Named]:
        with Session(self.engine) as db:
            rows = db.execute(
                select(col(OwnedObject.kind), col(OwnedObject.object_id)).where(
                    col(OwnedObject.grant_id) == grant_id
                )
            ).all()
        return [(kind, object_id) for kind, object_id in rows]


def counts_of(engine: Engine, user_id: str) -> dict[str, int]:
    """How many objects each of the owner's grants holds (for the settings page)."""
    with Session(engine) as db:
        rows = db.execute(
            select(col(OwnedObject.grant_id), func.count())
            .join(Grant, col(Grant.id) == col(OwnedObject.grant_id))
            .where(col(Grant.user_id) == user_id)
            .group_by(col(OwnedObject.grant_id))
        ).all()
    return {grant_id: count for grant_id, count in rows}
