"""Scopes as data: each scope is the exact list of (method, path template) pairs it allows.

What the consent screen shows is what an app gets: a pair that no scope lists is answered 404
by the proxy and never reaches the upstream, and a scope covers nothing beyond its pairs (so
``models`` can list and read models, and never delete one). Only GET, POST and DELETE appear
here; OPTIONS is answered by the proxy itself for CORS, and TRACE, PUT, PATCH and the rest are
never forwarded (an echoed TRACE would hand the owner's key to the app).

Templates are paths after ``/v1``; a ``{name}`` segment matches one path segment. The names
matter: ``ownership.PARAM_KINDS`` says which of them are ids of objects a grant must own.
Covers the OpenAI API as documented at https://platform.openai.com/docs/api-reference
(assistants and threads are deprecated and not listed; containers are not listed either).
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = frozenset({"GET", "POST", "DELETE"})


@dataclass(frozen=True)
class Scope:
    name: str
    label: str  # what the consent screen says the app may use
    pairs: tuple[tuple[str, str], ...]
    on_by_default: bool = True  # ticked on the consent screen when the app asks for it


SCOPES: tuple[Scope, ...] = (
    Scope(
        "chat",
        "Chat, Responses and conversations (text generation, and the conversations and "
        "stored completions this app makes)",
        (
            ("POST", "/chat/completions"),
            ("GET", "/chat/completions"),
            ("GET", "/chat/completions/{completion_id}"),
            ("POST", "/chat/completions/{completion_id}"),
            ("DELETE", "/chat/completions/{completion_id}"),
            ("GET", "/chat/completions/{completion_id}/messages"),
            ("POST", "/completions"),
            ("POST", "/responses"),
            ("POST", "/responses/input_tokens"),
            ("POST", "/responses/compact"),
            ("GET", "/responses/{response_id}"),
            ("DELETE", "/responses/{response_id}"),
            ("POST", "/responses/{response_id}/cancel"),
            ("GET", "/responses/{response_id}/input_items"),
            ("POST", "/conversations"),
            ("GET", "/conversations/{conversation_id}"),
            ("POST", "/conversations/{conversation_id}"),
            ("DELETE", "/conversations/{conversation_id}"),
            ("GET", "/conversations/{conversation_id}/items"),
            ("POST", "/conversations/{conversation_id}/items"),
            ("GET", "/conversations/{conversation_id}/items/{item_id}"),
            ("DELETE", "/conversations/{conversation_id}/items/{item_id}"),
        ),
    ),
    Scope("embeddings", "Embeddings", (("POST", "/embeddings"),)),
    Scope(
        "images",
        "Image generation and editing",
        (
            ("POST", "/images/generations"),
            ("POST", "/images/edits"),
            ("POST", "/images/variations"),
        ),
    ),
    Scope(
        "audio",
        "Speech, transcription and translation",
        (
            ("POST", "/audio/speech"),
            ("POST", "/audio/transcriptions"),
            ("POST", "/audio/translations"),
        ),
    ),
    Scope(
        "files",
        "Files, uploads and vector stores (only those this app makes)",
        (
            ("POST", "/files"),
            ("GET", "/files"),
            ("GET", "/files/{file_id}"),
            ("DELETE", "/files/{file_id}"),
            ("GET", "/files/{file_id}/content"),
            ("POST", "/uploads"),
            ("POST", "/uploads/{upload_id}/parts"),
            ("POST", "/uploads/{upload_id}/complete"),
            ("POST", "/uploads/{upload_id}/cancel"),
            ("POST", "/vector_stores"),
            ("GET", "/vector_stores"),
            ("GET", "/vector_stores/{vector_store_id}"),
            ("POST", "/vector_stores/{vector_store_id}"),
            ("DELETE", "/vector_stores/{vector_store_id}"),
            ("POST", "/vector_stores/{vector_store_id}/search"),
            ("POST", "/vector_stores/{vector_store_id}/files"),
            ("GET", "/vector_stores/{vector_store_id}/files"),
            ("GET", "/vector_stores/{vector_store_id}/files/{file_id}"),
            ("POST", "/vector_stores/{vector_store_id}/files/{file_id}"),
            ("DELETE", "/vector_stores/{vector_store_id}/files/{file_id}"),
            ("GET", "/vector_stores/{vector_store_id}/files/{file_id}/content"),
            ("POST", "/vector_stores/{vector_store_id}/file_batches"),
            ("GET", "/vector_stores/{vector_store_id}/file_batches/{file_batch_id}"),
            ("POST", "/vector_stores/{vector_store_id}/file_batches/{file_batch_id}/cancel"),
            ("GET", "/vector_stores/{vector_store_id}/file_batches/{file_batch_id}/files"),
        ),
    ),
    Scope("moderations", "Moderations", (("POST", "/moderations"),)),
    Scope("models", "List models (read only)", (("GET", "/models"), ("GET", "/models/{model}"))),
    Scope(
        "batches",
        "Batches: run many requests from an uploaded file at half price, answered within "
        "24 hours (each line is checked against the scopes and models allowed here)",
        (
            ("POST", "/batches"),
            ("GET", "/batches"),
            ("GET", "/batches/{batch_id}"),
            ("POST", "/batches/{batch_id}/cancel"),
        ),
        on_by_default=False,
    ),
    Scope(
        "fine_tuning",
        "Fine-tuning: train custom models on this app's files (billed per training token; "
        "the models it makes belong to your OpenAI account)",
        (
            ("POST", "/fine_tuning/jobs"),
            ("GET", "/fine_tuning/jobs"),
            ("GET", "/fine_tuning/jobs/{fine_tuning_job_id}"),
            ("POST", "/fine_tuning/jobs/{fine_tuning_job_id}/cancel"),
            ("POST", "/fine_tuning/jobs/{fine_tuning_job_id}/pause"),
            ("POST", "/fine_tuning/jobs/{fine_tuning_job_id}/resume"),
            ("GET", "/fine_tuning/jobs/{fine_tuning_job_id}/events"),
            ("GET", "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints"),
        ),
        on_by_default=False,
    ),
)
# The pairs that take a multipart/form-data body, as the API reference lists them (file
# uploads, upload parts, image edits and variations, audio transcription and translation);
# every other pair takes JSON only. A form elsewhere would skip the JSON-only checks (the ids
# a body names, a batch's lines), so it is refused before the upstream.
MULTIPART_PAIRS = frozenset(
    {
        ("POST", "/files"),
        ("POST", "/uploads/{upload_id}/parts"),
        ("POST", "/images/edits"),
        ("POST", "/images/variations"),
        ("POST", "/audio/transcriptions"),
        ("POST", "/audio/translations"),
    }
)
# The pairs whose body names the model that runs (and is billed): for a grant with a model
# list, a body here that names none is refused, since the upstream would pick one itself.
MODEL_PAIRS = frozenset(
    {
        ("POST", "/chat/completions"),
        ("POST", "/completions"),
        ("POST", "/responses"),
        ("POST", "/responses/input_tokens"),
        ("POST", "/responses/compact"),
        ("POST", "/embeddings"),
        ("POST", "/images/generations"),
        ("POST", "/images/edits"),
        ("POST", "/images/variations"),
        ("POST", "/audio/speech"),
        ("POST", "/audio/transcriptions"),
        ("POST", "/audio/translations"),
        ("POST", "/moderations"),
        ("POST", "/fine_tuning/jobs"),
    }
)
BY_NAME = {scope.name: scope for scope in SCOPES}
LABELS = {scope.name: scope.label for scope in SCOPES}


@dataclass(frozen=True)
class Route:
    """One listed pair, with the scope that lists it."""

    method: str
    template: str
    scope: str

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.template.split("/")[1:])


@dataclass(frozen=True)
class Match:
    route: Route
    params: tuple[tuple[str, str], ...]  # (template name, the path's segment), in path order


def _routes() -> dict[tuple[str, int], list[Route]]:
    """Routes by (method, segment count); literal segments first, so that
    ``/responses/compact`` wins over ``/responses/{response_id}``."""
    table: dict[tuple[str, int], list[Route]] = {}
    seen: set[tuple[str, str]] = set()
    for scope in SCOPES:
        for method, template in scope.pairs:
            assert method in METHODS, (scope.name, method)
            assert (method, template) not in seen, ("listed twice", method, template)
            seen.add((method, template))
            route = Route(method, template, scope.name)
            table.setdefault((method, len(route.parts)), []).append(route)
    assert seen >= MULTIPART_PAIRS, MULTIPART_PAIRS - seen
    assert seen >= MODEL_PAIRS, MODEL_PAIRS - seen
    for routes in table.values():
        routes.sort(key=lambda r: [p.startswith("{") for p in r.parts])
    return table


ROUTES = _routes()


def match(method: str, rest: str) -> Match | None:
    """The listed pair that ``method`` and the path after /v1 (from ``paths.api_path``) name.

    A trailing slash is not the same path: it is not listed, so it is refused.
    """
    parts = rest.split("/")[1:]
    for route in ROUTES.get((method, len(parts)), ()):
        params: list[tuple[str, str]] = []
        for want, got in zip(route.parts, parts, strict=True):
            if want.startswith("{"):
                if not got:
                    break
                params.append((want[1:-1], got))
            elif want != got:
                break
        else:
            return Match(route, tuple(params))
    return None


def all_pairs() -> list[Route]:
    return [route for routes in ROUTES.values() for route in routes]
