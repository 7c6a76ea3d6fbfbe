"""A batch's input file, checked line by line before the batch is created.

A batch runs every request of its JSONL input file with the owner's key, so each line must
pass the checks the proxy applies to a request sent directly: the line's url a listed pair of
a granted scope (and the batch's own endpoint, as OpenAI requires), its body strict JSON whose
model is on the grant's list and whose ids name only the grant's own objects.
https://platform.openai.com/docs/guides/batch (input file format).
"""

from __future__ import annotations

from dataclasses import dataclass

from keybroker.grants import GrantView
from keybroker.proxy import framing, ownership, policy, scopes
from keybroker.proxy.framing import FramingError
from keybroker.proxy.policy import Refused

FILE_LIMIT = 200 * 1024 * 1024  # OpenAI's largest batch input file
# The endpoints OpenAI runs batches for (API reference, "Create batch": endpoint).
BATCHABLE = frozenset(
    {
        "/v1/responses",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/moderations",
    }
)


@dataclass(frozen=True)
class BatchInput:
    requests: int
    models: tuple[str, ...]  # each line's model, in order ("" when a line names none)
    references: tuple[ownership.Named, ...]


def bad_line(number: int, why: str) -> Refused:
    return Refused(
        400,
        f"Line {number} of the batch input file {why}",
        "invalid_request_error",
        "invalid_batch_input",
        param="input_file_id",
    )


def check(grant: GrantView, endpoint: object, content: bytes) -> BatchInput:
    """The batch's requests if every line may run under this grant; else Refused."""
    models: list[str] = []
    references: list[ownership.Named] = []
    for number, line in enumerate(content.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            request = framing.strict_json(line)
        except FramingError as exc:
            raise bad_line(number, f"is not a request keybroker can check: {exc}") from None
        url = request.get("url")
        if request.get("method") != "POST" or not isinstance(url, str) or url != endpoint:
            raise bad_line(number, "must POST to the batch's endpoint.")
        found = scopes.match("POST", url.removeprefix("/v1")) if url in BATCHABLE else None
        if found is None:
            raise bad_line(number, f"names an endpoint keybroker does not batch: {url[:100]!r}.")
        body = request.get("body")
        if not isinstance(body, dict):
            raise bad_line(number, "has no request body object.")
        model = body.get("model")
        if "model" in body and not isinstance(model, str):
            raise bad_line(number, "names a model that is not a string.")
        try:
            policy.check_scope(grant, found)
            policy.check_model(grant, model)
            facts = policy.BodyFacts(
                models=policy.nested_models(body), stored_prompt=policy.stored_prompt(body)
            )
            policy.check_body(grant, found.route, model, facts)
        except Refused as refused:
            refused.message = f"Line {number} of the batch input file: {refused.message}"
            raise
        models.append(model or "")
        references.extend(ownership.body_references(line, body))
    if not models:
        raise bad_line(1, "is missing: the file has no requests.")
    return BatchInput(len(models), tuple(models), tuple(dict.fromkeys(references)))
