"""Cost of a request from its token counts, by a shipped (or operator-supplied) price table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SHIPPED = Path(__file__).with_name("pricing.json")


@dataclass(frozen=True)
class Cost:
    microusd: int
    known: bool


class PriceTable:
    def __init__(self, prices: dict[str, tuple[float, float]]) -> None:
        # Longest prefix first, so gpt-4o-mini wins over gpt-4o.
        self._prices = sorted(prices.items(), key=lambda item: -len(item[0]))
        self._found: dict[str, tuple[float, float] | None] = {}  # model -> price, as looked up

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        data = json.loads((path or SHIPPED).read_text())
        models = data.get("models", data)
        return cls(
            {m: (float(p[0]), float(p[1])) for m, p in models.items() if not m.startswith("_")}
        )

    def price(self, model: str) -> tuple[float, float] | None:
        if model in self._found:
            return self._found[model]
        found = None
        for prefix, price in self._prices:
            if model == prefix or model.startswith(prefix + "-"):
                found = price
                break
        if len(self._found) < 10_000:  # model names come from upstream answers: bounded
            self._found[model] = found
        return found

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> Cost:
        price = self.price(model)
        if price is None:
            return Cost(0, known=False)
        # USD per 1M tokens == micro-USD per token.
        return Cost(round(input_tokens * price[0] + output_tokens * price[1]), known=True)
