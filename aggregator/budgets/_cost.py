"""What a call costs against a budget: its worst case before it runs, its actual after.

Both use the pricing code (the price book: configuration over catalogue, dated prices,
cliff tiers chosen from the input tokens) at one instant, exactly (``Decimal``), with the
consumer's plan markup added, so they are in the same money as the invoice:

- worst case: every input token at the input price (no cache discount) and
  ``max_tokens`` at the output price — or the reasoning price when that is higher, since
  output tokens may all be reasoning;
- actual: the reported usage split into the disjoint token types the invoice prices
  (input net of cache reads and writes, output net of reasoning).

Known limit: the actual amount is exact per call; the invoice rounds each line (sum of
calls) to the minor unit, so the two may differ by less than a cent per line until the
call's span is stored and the invoice's own figure replaces the reservation's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any

from meterline.aggregator.pricing import MONEY_CONTEXT, Pricing, exact_amount

_USAGE_KEYS = ("input", "output", "cache_read", "cache_write", "reasoning")


@dataclass(frozen=True)
class Cost:
    """A call's cost in both units a budget may count."""

    money: Decimal | None
    """Exact, markup included; ``None``: the model has no price (never read as 0)."""
    tokens: int
    """Input + output tokens."""

    def amount(self, in_tokens: bool) -> Decimal | None:
        return Decimal(self.tokens) if in_tokens else self.money


def _markup(pricing: Pricing, consumer: str, amount: Decimal) -> Decimal:
    percent = pricing.config.plan_for(consumer).markup_percent
    with localcontext(MONEY_CONTEXT):
        return amount + amount * percent / 100


def unit_prices(
    pricing: Pricing, provider: str, model: str, input_tokens: int, at: datetime
) -> dict[str, Decimal] | None:
    """Price per million tokens of each type for such a call, or ``None`` (unpriced)."""
    match = pricing.book.match(provider, model, model, at)
    return None if match is None else match.prices.unit_prices(input_tokens)


def worst_case(
    pricing: Pricing,
    *,
    consumer: str,
    provider: str,
    model: str,
    input_tokens: int,
    max_tokens: int,
    at: datetime,
) -> Cost:
    """The most the call can cost (see the module docstring)."""
    tokens = input_tokens + max_tokens
    prices = unit_prices(pricing, provider, model, input_tokens, at)
    if prices is None or "input" not in prices or "output" not in prices:
        return Cost(None, tokens)
    out = max(prices["output"], prices.get("reasoning", prices["output"]))
    with localcontext(MONEY_CONTEXT):
        base = exact_amount(input_tokens, prices["input"]) + exact_amount(max_tokens, out)
    return Cost(_markup(pricing, consumer, base), tokens)


def output_price(pricing: Pricing, *, consumer: str, prices: dict[str, Decimal]) -> Decimal:
    """The worst-case price of one output token, markup included."""
    out = max(prices["output"], prices.get("reasoning", prices["output"]))
    with localcontext(MONEY_CONTEXT):
        return _markup(pricing, consumer, out / Decimal(1_000_000))


def check_usage(usage: Any) -> dict[str, int]:
    """A settle's usage, validated: non-negative integers, subsets within their totals.

    Raises:
        ValueError: a count is missing, not a sane integer, or a subset exceeds its total.
    """
    if not isinstance(usage, dict):
        raise ValueError("usage must be an object with input and output token counts")
    unknown = sorted(set(usage) - set(_USAGE_KEYS))
    if unknown:
        raise ValueError(f"unknown usage field {unknown[0]!r}; allowed: {', '.join(_USAGE_KEYS)}")
    counts: dict[str, int] = {}
    for key in _USAGE_KEYS:
        value = usage.get(key, 0)
        if value is None:
            value = 0
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise ValueError(f"usage.{key} {value!r} must be a whole number >= 0")
        counts[key] = value
    if counts["cache_read"] + counts["cache_write"] > counts["input"]:
        raise ValueError(
            "usage.cache_read + usage.cache_write exceed usage.input (they are subsets)"
        )
    if counts["reasoning"] > counts["output"]:
        raise ValueError("usage.reasoning exceeds usage.output (it is a subset)")
    return counts


def actual(
    pricing: Pricing,
    *,
    consumer: str,
    provider: str,
    model: str,
    usage: dict[str, int],
    at: datetime,
) -> Cost:
    """What the reported ``usage`` (validated by :func:`check_usage`) costs."""
    tokens = usage["input"] + usage["output"]
    prices = unit_prices(pricing, provider, model, usage["input"], at)
    if prices is None:
        return Cost(None, tokens)
    quantities = {
        "input": usage["input"] - usage["cache_read"] - usage["cache_write"],
        "cache_read": usage["cache_read"],
        "cache_write": usage["cache_write"],
        "output": usage["output"] - usage["reasoning"],
        "reasoning": usage["reasoning"],
    }
    total = Decimal(0)
    with localcontext(MONEY_CONTEXT):
        for token_type, quantity in quantities.items():
            if not quantity:
                continue
            price = prices.get(token_type)
            if price is None:
                return Cost(None, tokens)
            total += exact_amount(quantity, price)
    return Cost(_markup(pricing, consumer, total), tokens)
