"""What a grant may send: the allow/deny side of the policy, in one place.

Given the grant, the method, the path and the facts read from the body, it answers with a
frozen Decision (the listed route, its path parameters, the model, the body's facts and the
object ids the request names) or raises Refused with the error the app gets, in OpenAI's
shape (DESIGN.md: 404 for what no scope lists, 403 outside the grant, 400 for bad framing).
It reads nothing and writes nothing; the proxy does the I/O around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keybroker.grants import GrantView
from keybroker.proxy import scopes


class Refused(Exception):
    """The request is refused before the upstream; the fields are safe to return."""

    def __init__(
        self, status: int, message: str, kind: str, code: str, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param


def unknown_url(method: str, rest: str) -> Refused:
    # Worded as OpenAI words it, so an app sees the answer a missing endpoint gets there.
    return Refused(
        404,
        f"Invalid URL ({method} /v1{rest})",
        "invalid_request_error",
        "unknown_url",
    )


@dataclass(frozen=True)
class BodyFacts:
    """What the proxy read from a request body (all None/False for a body it did not read)."""

    content_type: bytes | None = None  # the one checked Content-Type, forwarded as is
    model: str | None = None  # the body's model, if it names one
    stream: bool = False
    store: bool | None = None  # the body's "store" flag, if it sets one
    references: tuple[tuple[str, str], ...] = ()  # (kind, id) of objects the body names
    models: tuple[str, ...] = ()  # every model the body names, at any depth (a tool's too)
    stored_prompt: bool = False  # the body runs a stored prompt ("prompt": {"id": ...})


@dataclass(frozen=True)
class Decision:
    route: scopes.Route
    params: tuple[tuple[str, str], ...]
    facts: BodyFacts

    @property
    def model(self) -> str | None:
        return self.facts.model


def route(method: str, rest: str) -> scopes.Match:
    """The listed pair for this method and path, or 404 (checked before the token is read)."""
    found = scopes.match(method, rest)
    if found is None:
        raise unknown_url(method, rest)
    return found


def check_scope(grant: GrantView, found: scopes.Match) -> None:
    name = found.route.scope
    if name not in grant.scopes:
        raise Refused(
            403,
            f"This key may not use {found.route.method} /v1{found.route.template}: it needs "
            f"the '{name}' scope, which the owner did not grant.",
            "invalid_request_error",
            "scope_not_granted",
        )


def check_model(grant: GrantView, model: str | None) -> None:
    if grant.models and model is not None and model not in grant.models:
        raise Refused(
            403,
            f"This key may not use the model {model!r}; the owner allowed: "
            f"{', '.join(grant.models)}.",
            "invalid_request_error",
            "model_not_allowed",
            param="model",
        )


def nested_models(fields: dict[str, Any]) -> tuple[str, ...]:
    """Every string under a "model" key at any depth: the top-level model, a tool's own
    (``tools: [{"type": "image_generation", "model": ...}]``) and any other nested one, so
    that no model-bearing field of the API slips past the list. A JSON schema property named
    model is an object, not a string, and is not read as one."""
    found: list[str] = []
    stack: list[Any] = [fields]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            model = value.get("model")
            if isinstance(model, str):
                found.append(model)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return tuple(found)


def stored_prompt(fields: dict[str, Any]) -> bool:
    # A Responses "prompt" object names a prompt the owner stored outside keybroker, with its
    # own model and instructions; none is made through the proxy, so none is the grant's.
    return isinstance(fields.get("prompt"), dict)


def check_body(grant: GrantView, route: scopes.Route, model: str | None, facts: BodyFacts) -> None:
    """The body's every model on the grant's list, no stored prompt, and a model named
    where the route runs one (for a grant with a model list)."""
    if facts.stored_prompt:
        raise Refused(
            403,
            "This key may not run a stored prompt: keybroker cannot check its model "
            "or tell whose it is.",
            "invalid_request_error",
            "stored_prompt_not_allowed",
            param="prompt",
        )
    for each in facts.models:
        check_model(grant, each)
    if grant.models and model is None and (route.method, route.template) in scopes.MODEL_PAIRS:
        raise Refused(
            403,
            f"This key may only use the models {', '.join(grant.models)}: name one in 'model'.",
            "invalid_request_error",
            "model_not_allowed",
            param="model",
        )


def decide(grant: GrantView, found: scopes.Match, facts: BodyFacts) -> Decision:
    """The decision for a request whose route is listed and granted, once its body is read."""
    check_scope(grant, found)
    check_model(grant, facts.model)
    if found.route.method == "POST":  # GET and DELETE carry no body
        check_body(grant, found.route, facts.model, facts)
    return Decision(found.route, found.params, facts)
