"""Price records: what one model costs per million tokens of each type, with cliff tiers.

Token types are disjoint (DESIGN token semantics): ``input`` is the input net of cache
reads and writes, ``cache_write`` the 5-minute writes, ``cache_write_1h`` the 1-hour
writes, ``output`` the output net of reasoning. A subset without a price of its own is
priced as its parent (``cache_write_1h`` → ``cache_write`` → ``input``, ``cache_read``
→ ``input``, ``reasoning`` → ``output``), the way genai-prices decomposes usage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

TOKEN_TYPES: tuple[str, ...] = (
    "input",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "output",
    "reasoning",
)
"""Priced token types, in invoice order; also the keys of ``per_million_tokens``."""

_FALLBACK: dict[str, str] = {
    "cache_read": "input",
    "cache_write": "input",
    "cache_write_1h": "cache_write",
    "reasoning": "output",
}

MILLION = Decimal(1_000_000)


def _frozen(prices: Mapping[str, Decimal]) -> Mapping[str, Decimal]:
    return MappingProxyType(dict(prices))


@dataclass(frozen=True)
class Tier:
    """A cliff tier: when a call's input tokens exceed the threshold, all its tokens
    are priced at the tier's prices."""

    above_input_tokens: int
    """The tier applies to calls with strictly more input tokens than this."""
    per_million_tokens: Mapping[str, Decimal]
    """Prices that replace the base ones; a type absent here keeps the lower level's."""


@dataclass(frozen=True)
class PriceSet:
    """The prices of one model for one period."""

    per_million_tokens: Mapping[str, Decimal]
    """Base prices per million tokens, by token type."""
    tiers: tuple[Tier, ...] = field(default=())
    """Cliff tiers, ascending by threshold."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_million_tokens", _frozen(self.per_million_tokens))
        object.__setattr__(
            self, "tiers", tuple(sorted(self.tiers, key=lambda t: t.above_input_tokens))
        )

    @property
    def thresholds(self) -> tuple[int, ...]:
        return tuple(t.above_input_tokens for t in self.tiers)

    def level(self, input_tokens: int) -> dict[str, Decimal]:
        """The explicit prices in force for a call with ``input_tokens`` (cliff tiers)."""
        prices = dict(self.per_million_tokens)
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                prices.update(tier.per_million_tokens)
        return prices

    def unit_prices(self, input_tokens: int) -> dict[str, Decimal]:
        """Price per million of every token type that has one (own or inherited)."""
        explicit = self.level(input_tokens)
        resolved: dict[str, Decimal] = {}
        for token_type in TOKEN_TYPES:
            key: str | None = token_type
            while key is not None and key not in explicit:
                key = _FALLBACK.get(key)
            if key is not None:
                resolved[token_type] = explicit[key]
        return resolved

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form, prices as decimal strings."""
        return {
            "per_million_tokens": {k: money_str(v) for k, v in self.per_million_tokens.items()},
            "tiers": [
                {
                    "above_input_tokens": t.above_input_tokens,
                    "per_million_tokens": {
                        k: money_str(v) for k, v in t.per_million_tokens.items()
                    },
                }
                for t in self.tiers
            ],
        }


def money_str(value: Decimal) -> str:
    """A decimal string without exponent notation (``Decimal('1E+1')`` → ``'10'``)."""
    text = format(value, "f")
    return "0" if text in ("-0", "") else text
