"""The pricing sections of the configuration file: ``currency``, ``models``, ``plans``.

The meaning of each key is documented in docs/pricing.md; the domain records built from
these sections are in :mod:`meterline.aggregator.pricing`. Validation only: a section
model says what may be written, not how prices are matched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from meterline.config._base import Money, Section, none_as_empty_dict, none_as_empty_list

CURRENCY = re.compile(r"[A-Z]{3}")

DEFAULT_CATALOGUE_URL = (
    "https://raw.githubusercontent.com/pydantic/genai-prices/refs/heads/main/"
    "prices/new_data/v2/data.json"
)
"""Where genai-prices publishes its data (its own auto-update URL): ``catalogue.url``'s
default."""


def _instant(value: Any) -> datetime | None:
    """``effective_from``: a date (UTC midnight), a datetime or an ISO 8601 string."""
    from meterline.aggregator._instants import check_instant

    if value is None:
        return None
    text = None
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = None
    elif isinstance(value, date) and not isinstance(value, datetime):
        text = value.isoformat()
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, datetime):
        raise PydanticCustomError(
            "date_syntax",
            "{value} is not a date (YYYY-MM-DD) or an ISO 8601 time",
            {"value": repr(text) if text is not None else repr(value)},
        )
    try:  # a change point is a bound of the rating query: it must be storable
        return check_instant(value, name="", text=text)
    except ValueError as exc:
        raise PydanticCustomError("date_range", "{error}", {"error": str(exc)}) from None


Instant = Annotated[datetime | None, BeforeValidator(_instant)]


def decimals(value: Decimal) -> int:
    """Digits after the point that ``value`` needs (``2.50`` → 1, ``1E-30`` → 30), exactly
    (``Decimal.normalize`` would round to the context's 28 digits first)."""
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        return 0
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing)) if any(digits) else 0


def _at_most(places: Callable[[], int], what: str) -> Callable[[Decimal], Decimal]:
    """A validator refusing an amount finer than the rated-usage table holds: stored, it
    would be rounded; every amount meterline shows is read from that table."""

    def check(value: Decimal) -> Decimal:
        limit = places()
        if decimals(value) > limit:
            raise PydanticCustomError(
                "money_scale",
                "{value} has {n} decimals; {what} may have at most {limit} (the rated-usage "
                "table holds them exactly to that scale): round it",
                {"value": f"{value:f}", "n": decimals(value), "what": what, "limit": limit},
            )
        return value

    return check


def _price_scale() -> int:
    from meterline.store.rated_schema import PRICE_SCALE

    return PRICE_SCALE


def _markup_scale() -> int:
    from meterline.store.rated_schema import MARKUP_FRACTION_SCALE

    return MARKUP_FRACTION_SCALE - 2  # percent: the fraction has two more


Price = Annotated[Money, AfterValidator(_at_most(_price_scale, "a price per million tokens"))]
"""A price per million tokens: money with at most ``PRICE_SCALE`` (24) decimals."""

MarkupPercent = Annotated[Money, AfterValidator(_at_most(_markup_scale, "markup_percent"))]
"""``markup_percent``: money with at most 8 decimals."""


class TokenPrices(Section):
    """Prices per million tokens, by token type (docs/pricing.md, "Token types")."""

    input: Price | None = None
    cache_read: Price | None = None
    cache_write: Price | None = None
    cache_write_1h: Price | None = None
    output: Price | None = None
    reasoning: Price | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> TokenPrices:
        if not self.model_fields_set:
            raise PydanticCustomError(
                "prices_empty",
                'give at least one price, e.g. input: "2.50"',
                {},
            )
        return self

    def given(self) -> dict[str, Any]:
        """The prices written, in invoice order."""
        return {k: v for k, v in self if v is not None}


class TierSection(Section):
    """A cliff tier of a ``models`` entry."""

    above_input_tokens: int = Field(ge=0)
    per_million_tokens: TokenPrices


class ModelPriceSection(Section):
    """One ``models`` entry: a provider's model (exact id or pattern) and its prices."""

    provider: str = Field(min_length=1)
    model: str | None = None
    match: str | None = None
    effective_from: Instant = None
    per_million_tokens: TokenPrices
    tiers: Annotated[list[TierSection], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list
    )

    @field_validator("match")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise PydanticCustomError(
                    "pattern", "invalid regular expression {value}: {error}",
                    {"value": repr(value), "error": str(exc)},
                ) from None  # fmt: skip
        return value

    @model_validator(mode="after")
    def _model_or_match(self) -> ModelPriceSection:
        if (self.model is None) == (self.match is None):
            raise PydanticCustomError(
                "model_or_match",
                "give exactly one of `model` (an exact id) or `match` (a regular expression)",
                {},
            )
        return self


class PlanSection(Section):
    """A plan; a key it omits comes from ``plans.default``."""

    markup_percent: MarkupPercent | None = None
    bill_failed_requests: bool | None = None


class PlansSection(Section):
    """``plans``: the default plan and the plans of named consumers."""

    default: PlanSection | None = None
    consumers: Annotated[dict[str, PlanSection | None], BeforeValidator(none_as_empty_dict)] = (
        Field(default_factory=dict)
    )


def _currency(value: Any) -> Any:
    if not isinstance(value, str) or not CURRENCY.fullmatch(value):
        raise PydanticCustomError(
            "currency", "{value} is not an ISO 4217 code such as 'USD'", {"value": repr(value)}
        )
    return value


Currency = Annotated[str, BeforeValidator(_currency)]


def _http_url(value: Any) -> Any:
    from urllib.parse import urlsplit

    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError(
            "catalogue_url",
            "{value} is not an http(s) URL of genai-prices data (default {default})",
            {"value": repr(value), "default": DEFAULT_CATALOGUE_URL},
        )
    return value


class CatalogueSection(Section):
    """``catalogue``: the only place ``prices update`` fetches published prices from."""

    url: Annotated[str, BeforeValidator(_http_url)] = DEFAULT_CATALOGUE_URL
