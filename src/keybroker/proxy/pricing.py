"""What a request costs: a price table by exact model id (and its dated snapshots).

Never by prefix: ``o1-pro`` is a different product from ``o1`` at ten times its price, so a
model that is not in the table has no price at all, and the proxy refuses it for a budgeted
grant instead of charging it $0 (docs/budgets.md). Prices are floats as published (USD per 1M
tokens is micro-USD per token); every cost that leaves this module is whole micro-USD.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).with_name("pricing.json")
# Without a max_output in the table, what a request that names no output limit may produce.
DEFAULT_MAX_OUTPUT = 16_384
DEFAULT_CONTEXT = 128_000


class PriceTableError(ValueError):
    """The price file cannot be used; the message says where."""


@dataclass(frozen=True)
class Price:
    """One model's prices. Per-token rates are micro-USD per token (= USD per 1M tokens)."""

    model: str
    input: float = 0.0
    cached_input: float | None = None  # None: cached input costs what input costs
    output: float = 0.0
    audio_input: float | None = None
    audio_output: float | None = None
    image_input: float | None = None
    characters: float = 0.0  # micro-USD per character of speech input
    minute: float = 0.0  # micro-USD per minute of audio
    images: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # micro-USD per image
    max_output: int = DEFAULT_MAX_OUTPUT
    context: int = DEFAULT_CONTEXT
    free: bool = False

    def image(self, quality: str, size: str) -> float:
        """One image at this quality and size; the dearest one when either is unknown or auto
        (what the upstream picks for "auto" is not known before it answers)."""
        tables = [self.images[quality]] if quality in self.images else list(self.images.values())
        exact = [table[size] for table in tables if size in table]
        return max(exact or [usd for table in tables for usd in table.values()], default=0.0)


@dataclass(frozen=True)
class Tokens:
    """What an answer reported, split the ways they are priced."""

    input: int = 0  # all input tokens, including the cached, audio and image ones below
    cached: int = 0
    audio_input: int = 0
    image_input: int = 0
    output: int = 0  # all output tokens, including audio ones (reasoning tokens are output)
    audio_output: int = 0


def token_cost(price: Price, tokens: Tokens) -> float:
    """Micro-USD (unrounded) for reported tokens."""
    special = tokens.cached + tokens.audio_input + tokens.image_input
    plain_input = max(0, tokens.input - special)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    audio_in = price.input if price.audio_input is None else price.audio_input
    image_in = price.input if price.image_input is None else price.image_input
    audio_out = price.output if price.audio_output is None else price.audio_output
    return (
        plain_input * price.input
        + tokens.cached * cached_rate
        + tokens.audio_input * audio_in
        + tokens.image_input * image_in
        + max(0, tokens.output - tokens.audio_output) * price.output
        + tokens.audio_output * audio_out
    )


def whole(microusd: float) -> int:
    """Micro-USD as an integer, rounded up: a budget is never undercounted by rounding."""
    return max(0, math.ceil(microusd - 1e-9))


class PriceTable:
    def __init__(
        self, models: dict[str, Price], aliases: dict[str, str], tools: dict[str, float], date: str
    ) -> None:
        self._models = models
        self._aliases = aliases  # dated snapshot id -> the entry it is priced as
        self.tools = tools  # micro-USD per call, by output item type
        self.date = date

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """The shipped table, with the entries of the operator's file (if any) replacing the
        shipped ones of the same id. A shipped entry's snapshots keep pointing at it."""
        shipped = _read(SHIPPED)
        entries: dict[str, Any] = dict(shipped.get("models", {}))
        listed = list(entries.values())  # the shipped snapshots, whatever replaces an entry
        tools: dict[str, Any] = dict(shipped.get("tools", {}))
        date = str(shipped.get("date", ""))
        if path is not None:
            override = _read(path)
            # The old format: {"models": {...}} or a bare {model: [input, output]} mapping.
            models = override.get("models", override if "date" not in override else {})
            entries.update({m: v for m, v in models.items() if not m.startswith("_")})
            tools.update(override.get("tools", {}))
            date = f"{override.get('date', 'undated')} (operator's {path.name}; shipped {date})"
        prices: dict[str, Price] = {}
        aliases: dict[str, str] = {}
        for model, entry in entries.items():
            if model.startswith("_"):
                continue
            prices[model] = _price(model, entry, path or SHIPPED)
        for model, entry in [
            *zip(shipped.get("models", {}), listed, strict=True),
            *entries.items(),
        ]:
            if isinstance(entry, dict) and not model.startswith("_"):
                for snapshot in entry.get("snapshots", []):
                    aliases[str(snapshot)] = model
        for snapshot in list(aliases):
            if snapshot in prices:  # a snapshot priced on its own line wins
                del aliases[snapshot]
        return cls(prices, aliases, {t: float(p) * 1000 for t, p in tools.items()}, date)

    @property
    def size(self) -> int:
        return len(self._models) + len(self._aliases)

    def price(self, model: str) -> Price | None:
        found = self._models.get(model)
        if found is None and model in self._aliases:
            found = self._models[self._aliases[model]]
        return found

    def cost(self, model: str, tokens: Tokens) -> int | None:
        """Whole micro-USD for the tokens an answer reported, or None without a price."""
        price = self.price(model)
        return None if price is None else whole(token_cost(price, tokens))


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PriceTableError(f"price file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise PriceTableError(f"price file {path}: not a JSON object")
    return data


_RATES = ("input", "cached_input", "output", "audio_input", "audio_output", "image_input")


def _price(model: str, entry: Any, source: Path) -> Price:
    try:
        if isinstance(entry, list):  # the old format: [input, output] per 1M tokens
            return Price(model, input=float(entry[0]), output=float(entry[1]))
        rates: dict[str, Any] = {k: float(entry[k]) for k in _RATES if k in entry}
        images = {
            str(quality): {str(size): float(usd) * 1_000_000 for size, usd in sizes.items()}
            for quality, sizes in entry.get("images", {}).items()
        }
        return Price(
            model,
            **rates,
            characters=float(entry.get("characters", 0.0)),
            minute=float(entry.get("minute", 0.0)) * 1_000_000,
            images=images,
            max_output=int(entry.get("max_output", DEFAULT_MAX_OUTPUT)),
            context=int(entry.get("context", DEFAULT_CONTEXT)),
            free=bool(entry.get("free", False)),
        )
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise PriceTableError(f"price file {source}: entry {model!r}: {exc}") from None
