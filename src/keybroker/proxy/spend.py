"""Spend: what a request may cost, reserved before it goes upstream and settled after.

The reservation side of the proxy's policy, in one place: from the grant, the method, the path
and the body's facts, ``Spend.plan`` decides what the request is charged by (tokens, images,
characters, minutes, or nothing) and what to reserve (its worst case); ``Spend.admit`` takes
the rate slot and the reservation in one atomic step (limits.py); ``Spend.charge`` says what
the answer cost, or an estimate when its usage never came; ``Spend.settle`` ends the
reservation. forward.py stays the relay: it only calls these four. docs/budgets.md says what
an owner sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from keybroker import rollups
from keybroker.grants import GrantView
from keybroker.models import utcnow
from keybroker.proxy.limits import FREE, Ask, Decision, Limits, Reservation, SpendUnknown
from keybroker.proxy.pricing import Price, PriceTable, token_cost, whole
from keybroker.proxy.usage import Seen, month_of

# What each (method, path template) costs by; "{}" is one path segment. Unlisted: free (reads,
# deletes, files, uploads, conversations). "unknown": it costs money that no answer reports
# in a form this proxy can meter, so a budgeted grant may not use it.
ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/chat/completions"): "tokens",
    ("POST", "/completions"): "tokens",
    ("POST", "/responses"): "tokens",
    ("POST", "/embeddings"): "tokens",
    ("POST", "/images/generations"): "images",
    ("POST", "/images/edits"): "images",
    ("POST", "/images/variations"): "images",
    ("POST", "/audio/speech"): "speech",
    ("POST", "/audio/transcriptions"): "minutes",
    ("POST", "/audio/translations"): "minutes",
    ("POST", "/moderations"): "free",
    ("GET", "/responses/{}"): "retrieve",  # may settle a background response
    ("POST", "/responses/{}/cancel"): "retrieve",
    # Jobs whose cost is known only when they end, out of this proxy's sight. (Batches are
    # too, but they are a scope of their own, off by default, that the owner opts into.)
    ("POST", "/threads/runs"): "unknown",
    ("POST", "/threads/{}/runs"): "unknown",
    ("POST", "/threads/{}/runs/{}/submit_tool_outputs"): "unknown",
    ("POST", "/containers"): "unknown",
    # These mint client secrets that talk to OpenAI directly, past every limit here.
    ("POST", "/realtime/sessions"): "unknown",
    ("POST", "/realtime/client_secrets"): "unknown",
    ("POST", "/realtime/transcription_sessions"): "unknown",
}
_BY_LENGTH: dict[int, list[tuple[str, tuple[str, ...], str]]] = {}
for (_method, _template), _kind in ROUTES.items():
    _parts = tuple(_template.split("/")[1:])
    _BY_LENGTH.setdefault(len(_parts), []).append((_method, _parts, _kind))

# Responses tools whose cost is billed outside the usage an answer reports.
UNMETERED_TOOLS = frozenset({"image_generation"})
METERED_TOOLS = {
    "web_search": "web_search_call",
    "web_search_preview": "web_search_call",
    "file_search": "file_search_call",
    "code_interpreter": "code_interpreter_call",  # charged as a container each, erring high
}
TOOL_CALLS_RESERVED = 5  # per tool, when the request sets no max_tool_calls
# Transcription is billed by the minute, which is known only from the answer: the worst case
# is the upload at 16 kbit/s, below any speech codec's usual rate.
AUDIO_BYTES_PER_MINUTE = 16_000 // 8 * 60
EDIT_IMAGE_TOKENS = 6_000  # image input tokens an edit's source image may count, at most
TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
ASCII = bytes(range(128))


class NotPriced(Exception):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


class CostUnknown(Exception):
    """The request costs money in a way no answer reports; the message is safe to return."""


class Unreadable(CostUnknown):
    """A body that costs money but cannot be read, so neither its model nor its size is known."""


def route_kind(method: str, rest: str) -> str:
    parts = tuple(rest.strip("/").split("/"))
    for want_method, template, kind in _BY_LENGTH.get(len(parts), ()):
        pairs = zip(template, parts, strict=True)
        if want_method == method and all(t in ("{}", p) for t, p in pairs):
            return kind
    return "free"


def estimate_tokens(text: bytes) -> int:
    """Input tokens of a request from its bytes, erring high: English text is about 4.3
    characters a token (100 tokens ~ 75 words), counted here at 3.8, so the estimate is
    within 0-13% above for ordinary prose, and within 25% down to 4.75 characters a token.
    Every byte outside ASCII counts half a token (CJK: a character is 3 bytes, 1-2 tokens)."""
    other = len(text.translate(None, ASCII))
    return math.ceil((len(text) - other) * 10 / 38) + (other + 1) // 2


def _int(value: Any, default: int, low: int, high: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, low), high)
    if isinstance(value, str) and value.isdigit():
        return min(max(int(value), low), high)
    return default


@dataclass(frozen=True)
class Plan:
    """What one request is charged by, decided before it is sent."""

    kind: str  # tokens, images, speech, minutes, free, retrieve
    model: str = ""
    price: Price | None = None
    ask: Ask = FREE
    input_tokens: int = 0  # estimated from the body
    units: int = 0  # micro-USD of images / characters / minutes, when charged by unit
    background: bool = False
    tools: tuple[str, ...] = ()  # output item types charged per call
    retrieves: str = ""  # GET /responses/{id}: the id, to settle a background response


FREE_PLAN = Plan("free")


@dataclass(frozen=True)
class Charge:
    microusd: int
    estimated: bool  # no usage arrived: the full input and the output relayed so far
    model: str
    input_tokens: int
    output_tokens: int


NOTHING = Charge(0, False, "", 0, 0)


class Spend:
    def __init__(self, limits: Limits, prices: PriceTable, engine: Engine) -> None:
        self.limits = limits
        self.prices = prices
        self.engine = engine

    # --- before the request ------------------------------------------------------------------

    def plan(
        self,
        method: str,
        rest: str,
        body: bytes | None,
        fields: dict[str, Any] | None,
        form: dict[str, list[str]] | None,
    ) -> Plan:
        """Raises NotPriced, CostUnknown. ``fields``: a JSON body's top level; ``form``: a
        multipart body's short fields (model, n, size, quality, image...)."""
        kind = route_kind(method, rest)
        if kind == "free":
            return FREE_PLAN
        if kind == "retrieve":
            return Plan("retrieve", retrieves=rest.strip("/").split("/")[1])
        if kind == "unknown":
            raise CostUnknown(
                f"keybroker cannot meter {method} /v1{rest} (its cost is known only when it "
                "ends, out of the proxy's sight), so a key with a budget may not use it."
            )
        values: dict[str, Any] = dict(fields or {})
        if form is not None:
            values.update({k: v[0] for k, v in form.items() if v})
        if body is not None and fields is None and form is None:
            raise Unreadable(
                "We could not parse the JSON body of your request (keybroker reads the body "
                "of every request that costs money, to price it)."
            )
        model = values.get("model")
        if model is None and kind == "images":
            model = "dall-e-2"  # the upstream's default for every images route
        if not isinstance(model, str) or not model:
            raise CostUnknown(f"Name the model: /v1{rest} is priced by model.")
        price = self.prices.price(model)
        if price is None:
            raise NotPriced(model)
        if price.free:
            return Plan("free", model=model, price=price)
        size = len(body) if body is not None else 0
        text = body or b""
        if kind == "tokens":
            return self._tokens_plan(rest, model, price, values, text)
        if kind == "images":
            n = _int(values.get("n"), 1, 1, 10)
            default = "standard" if model.startswith("dall-e") else "auto"
            quality = str(values.get("quality") or default)
            units = n * price.image(quality, str(values.get("size") or "auto"))
            sources = len((form or {}).get("image", [])) + len((form or {}).get("image[]", []))
            prompt = values.get("prompt")
            tokens = estimate_tokens(prompt.encode()) if isinstance(prompt, str) else 0
            image_in = (
                sources
                * EDIT_IMAGE_TOKENS
                * (price.input if price.image_input is None else price.image_input)
            )
            worst = units + tokens * price.input + image_in
            ask = Ask(whole(worst), whole(units))
            return Plan("images", model, price, ask, tokens, whole(units))
        if kind == "speech":
            if not price.characters:
                raise NotPriced(model)
            spoken = values.get("input")
            chars = len(spoken) if isinstance(spoken, str) else size
            units = whole(chars * price.characters)
            return Plan("speech", model, price, Ask(units, units), 0, units)
        # minutes: transcription and translation
        if not price.minute:
            raise NotPriced(model)
        minutes = max(1, -(-size // AUDIO_BYTES_PER_MINUTE))
        units = whole(minutes * price.minute)
        return Plan("minutes", model, price, Ask(units, 0), 0, units)

    def _tokens_plan(
        self, rest: str, model: str, price: Price, fields: dict[str, Any], body: bytes
    ) -> Plan:
        tools: list[str] = []
        calls = 0.0
        listed = fields.get("tools")
        for tool in listed if isinstance(listed, list) else []:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind in UNMETERED_TOOLS:
                raise CostUnknown(
                    f"keybroker cannot meter the {kind!r} tool (billed apart from the "
                    "answer's usage), so a key with a budget may not use it."
                )
            if kind in METERED_TOOLS:
                tools.append(METERED_TOOLS[kind])
                calls += self.prices.tools.get(METERED_TOOLS[kind], 0.0) * _int(
                    fields.get("max_tool_calls"), TOOL_CALLS_RESERVED, 0, 1000
                )
        tokens = estimate_tokens(body)
        worst_in = tokens
        if any(k in fields for k in ("previous_response_id", "conversation", "prompt")):
            # Earlier turns count as input, and they are not in this body.
            worst_in += price.context
        cap = price.max_output
        for name in ("max_completion_tokens", "max_output_tokens", "max_tokens"):
            if name in fields:
                cap = _int(fields[name], cap, 0, cap)
                break
        if rest == "/embeddings":
            cap = 0
        n = _int(fields.get("n"), 1, 1, 128) if rest != "/responses" else 1
        # Output may be audio (gpt-4o-audio-preview), dearer than text: the worst case is that.
        rate = max(price.output, price.audio_output or 0.0)
        worst = worst_in * price.input + n * cap * rate + calls
        return Plan(
            "tokens",
            model,
            price,
            Ask(whole(worst), whole(tokens * price.input)),
            tokens,
            background=fields.get("background") is True and rest == "/responses",
            tools=tuple(dict.fromkeys(tools)),
        )

    async def admit(self, grant: GrantView, plan: Plan) -> Decision:
        """The rate slot and the reservation, atomically; raises LimitsUnavailable."""
        month = month_of(utcnow())
        try:
            return await self.limits.admit(
                grant.id, grant.rpm, month, grant.budget_microusd, plan.ask
            )
        except SpendUnknown:
            await self.load(grant.id, month)
            return await self.limits.admit(
                grant.id, grant.rpm, month, grant.budget_microusd, plan.ask
            )

    async def load(self, grant_id: str, month: str) -> None:
        # The month's spend from the daily rollups: at most 31 rows, whatever the history.
        spent = await run_in_threadpool(rollups.month_spend, self.engine, grant_id)
        await self.limits.load_spent(grant_id, month, spent)

    async def state(self, grant: GrantView) -> tuple[int, int]:
        """(spent this month, reserved by requests in flight), micro-USD."""
        month = month_of(utcnow())
        found = await self.limits.state(grant.id, month)
        if found is None:
            await self.load(grant.id, month)
            found = await self.limits.state(grant.id, month)
        return found or (0, 0)

    # --- after the answer --------------------------------------------------------------------

    def charge(self, plan: Plan, seen: Seen, status: int, interrupted: bool) -> Charge:
        """What the request cost, from the usage its answer reported; an estimate when none
        came but the upstream may bill it (cut, timed out, failed mid-way); nothing for an
        error answer (OpenAI does not bill those) or a request that never reached it."""
        model = seen.model or plan.model
        price = plan.price
        if price is not None and seen.model and (found := self.prices.price(seen.model)):
            price = found  # the snapshot that answered, when it is priced on its own
        if price is None or plan.kind in ("free", "retrieve"):
            return Charge(0, False, model, seen.tokens.input, seen.tokens.output)
        billed = interrupted or 200 <= status < 400
        tools = sum(seen.tool_calls.get(t, 0) * self.prices.tools.get(t, 0.0) for t in plan.tools)
        by_tokens = price.input or price.output or price.audio_input
        if seen.reported and by_tokens:
            cost = token_cost(price, seen.tokens) + tools
            return Charge(whole(cost), False, model, seen.tokens.input, seen.tokens.output)
        if plan.kind == "minutes" and seen.seconds and price.minute:
            return Charge(whole(seen.seconds * price.minute / 60), False, model, 0, 0)
        if not billed:
            return Charge(0, False, model, seen.tokens.input, seen.tokens.output)
        if plan.background:
            # Queued (or its stream cut: it runs on regardless): nothing is known until it
            # completes, so it is charged its reservation now, and settled to its real cost
            # when the app fetches it (``settle``).
            return Charge(plan.ask.amount, True, model, plan.input_tokens, 0)
        if plan.kind == "tokens":
            output = seen.deltas
            cost = plan.input_tokens * price.input + output * price.output + tools
            return Charge(whole(cost), True, model, plan.input_tokens, output)
        # Priced per unit (images, characters, minutes): what was asked for, as reserved.
        # Images and speech are known in full before the answer; a transcription without a
        # reported duration is charged the worst case its upload allowed.
        estimated = plan.kind == "minutes" or interrupted
        cost = plan.units + plan.input_tokens * price.input
        return Charge(whole(cost), estimated, model, plan.input_tokens, 0)

    async def settle(
        self,
        grant: GrantView,
        plan: Plan,
        reservation: Reservation | None,
        charge: Charge,
        seen: Seen,
    ) -> int:
        """End the reservation with the charge; returns what to record as this request's cost
        (for a fetched background response: the correction to what its creation was charged)."""
        month = month_of(utcnow())
        cost = charge.microusd
        if plan.background and charge.estimated and seen.response_id:
            await self.limits.hold(seen.response_id, grant.id, cost)
        elif plan.kind == "retrieve" and seen.reported and seen.status in TERMINAL:
            held = await self.limits.release(plan.retrieves, grant.id)
            if held is not None:
                price = self.prices.price(seen.model)
                if price is not None:
                    real = token_cost(price, seen.tokens) + sum(
                        n * self.prices.tools.get(t, 0.0) for t, n in seen.tool_calls.items()
                    )
                    cost = whole(real) - held
                else:
                    await self.limits.hold(plan.retrieves, grant.id, held)  # keep the charge
        if reservation is not None or cost:
            await self.limits.settle(grant.id, month, reservation, cost)
        return cost
