"""Pricing: the catalogue, matching and exact rating of LLM usage.

- :class:`Catalogue` — genai-prices' bundled, dated data (offline), or a stored snapshot.
- :class:`PricingConfig` — ``currency``, ``models`` and ``plans`` from the YAML file.
- :class:`PriceBook` — which price applies to a call (configuration over catalogue).
- :class:`Rater` — usage groups × prices → exact ``Decimal`` charges.

Nothing here reads the store; see :mod:`meterline.aggregator.invoices` for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meterline.aggregator.pricing._book import PriceBook, PriceMatch, RatingGrid
from meterline.aggregator.pricing._catalogue import (
    PROVIDER_ALIASES,
    Catalogue,
    CatalogueModel,
    canonical_provider,
)
from meterline.aggregator.pricing._config import (
    DEFAULT_CATALOGUE_URL,
    DEFAULT_GRACE,
    MINOR_UNITS,
    Plan,
    PriceEntry,
    PricingConfig,
    PricingConfigError,
    load_pricing_config,
    parse_duration,
    parse_pricing_config,
    pricing_config,
)
from meterline.aggregator.pricing._prices import TOKEN_TYPES, PriceSet, Tier, money_str
from meterline.aggregator.pricing._rating import (
    MONEY_CONTEXT,
    Charge,
    RatedGroup,
    Rater,
    UsageGroup,
    exact_amount,
    round_money,
)
from meterline.aggregator.pricing._table import price_table

__all__ = [
    "DEFAULT_CATALOGUE_URL",
    "DEFAULT_GRACE",
    "MINOR_UNITS",
    "MONEY_CONTEXT",
    "PROVIDER_ALIASES",
    "TOKEN_TYPES",
    "Catalogue",
    "CatalogueModel",
    "Charge",
    "Plan",
    "PriceBook",
    "PriceEntry",
    "PriceMatch",
    "PriceSet",
    "Pricing",
    "PricingConfig",
    "PricingConfigError",
    "RatedGroup",
    "Rater",
    "RatingGrid",
    "Tier",
    "UsageGroup",
    "canonical_provider",
    "exact_amount",
    "load_pricing",
    "load_pricing_config",
    "money_str",
    "parse_duration",
    "parse_pricing_config",
    "price_table",
    "pricing_config",
    "round_money",
]


@dataclass(frozen=True)
class Pricing:
    """Everything needed to price usage: the configuration, the catalogue, the book."""

    config: PricingConfig
    """Currency, configured prices and plans."""
    catalogue: Catalogue | None
    """The catalogue in use (``None`` when the currency is not USD)."""
    book: PriceBook
    """Matching over both."""

    @classmethod
    def build(cls, config: PricingConfig, catalogue: Catalogue | None) -> Pricing:
        book = PriceBook(config, catalogue)
        return cls(config=config, catalogue=book.catalogue, book=book)


def load_pricing(config_path: str | Path | None, *, catalogue: Catalogue | None = None) -> Pricing:
    """Pricing from the YAML file at ``config_path`` over ``catalogue`` (default: the
    bundled genai-prices data).

    Raises:
        PricingConfigError: the file is unreadable or invalid.
    """
    config = load_pricing_config(config_path)
    return Pricing.build(config, catalogue if catalogue is not None else Catalogue.bundled())
