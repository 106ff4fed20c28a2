"""Pricing records built from the ``currency``, ``models`` and ``plans`` sections.

What may be written in those sections is validated by :mod:`meterline.config` (the whole
file at once: an unknown key anywhere is an error); this module turns the validated
sections into the records the price book matches on (docs/pricing.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterline.aggregator.pricing._prices import PriceSet, Tier
from meterline.config import ConfigError, ConfigFile, load_config, validate_config
from meterline.config._pricing import DEFAULT_CATALOGUE_URL, PlanSection
from meterline.config._stripe import DEFAULT_GRACE, duration

MINOR_UNITS: dict[str, int] = {
    "BHD": 3,
    "CLP": 0,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "OMR": 3,
    "TND": 3,
    "VND": 0,
}
"""Currencies whose minor unit is not the cent (ISO 4217); any other has 2 decimals."""


PricingConfigError = ConfigError
"""The configuration file is invalid (the name this package has always raised)."""


@dataclass(frozen=True)
class PriceEntry:
    """One ``models`` entry of the configuration file."""

    provider: str
    """Provider as stored (``gen_ai.provider.name``), compared after normalisation."""
    model: str | None
    """Exact model id, or ``None`` for a pattern entry."""
    match: re.Pattern[str] | None
    """Regular expression searched in the model id, or ``None`` for an exact entry."""
    effective_from: datetime | None
    """Start of validity (UTC); ``None``: always."""
    prices: PriceSet
    """The prices."""
    position: int = 0
    """Index in the file; later entries win ties."""

    @property
    def label(self) -> str:
        return self.model if self.model is not None else f"match:{self.match.pattern}"  # type: ignore[union-attr]


@dataclass(frozen=True)
class Plan:
    """What a consumer pays on top of the prices."""

    markup_percent: Decimal = Decimal(0)
    """Added to the subtotal: ``markup = subtotal × markup_percent / 100``."""
    bill_failed_requests: bool = False
    """Bill failed calls too (DESIGN invariant 6: not by default)."""


@dataclass(frozen=True)
class PricingConfig:
    """Prices and plans from the configuration file (all optional)."""

    currency: str = "USD"
    """ISO 4217 code of every amount."""
    entries: tuple[PriceEntry, ...] = ()
    """``models`` entries, in file order."""
    default_plan: Plan = field(default_factory=Plan)
    """``plans.default``."""
    consumer_plans: Mapping[str, Plan] = field(default_factory=dict)
    """``plans.consumers``: consumer id → plan."""
    catalogue_url: str = DEFAULT_CATALOGUE_URL
    """``catalogue.url``: where ``prices update`` fetches published prices from."""
    grace: timedelta = DEFAULT_GRACE
    """``stripe.grace``: a month may be finalised once it ended this long ago."""

    @property
    def minor_units(self) -> int:
        return MINOR_UNITS.get(self.currency, 2)

    def plan_for(self, consumer: str) -> Plan:
        return self.consumer_plans.get(consumer, self.default_plan)


def _plan(section: PlanSection | None, base: Plan) -> Plan:
    if section is None:
        return base
    markup = section.markup_percent
    bill_failed = section.bill_failed_requests
    return Plan(
        markup_percent=base.markup_percent if markup is None else markup,
        bill_failed_requests=base.bill_failed_requests if bill_failed is None else bill_failed,
    )


def pricing_config(file: ConfigFile) -> PricingConfig:
    """The pricing records of a validated configuration file."""
    entries = tuple(
        PriceEntry(
            provider=entry.provider,
            model=entry.model,
            match=re.compile(entry.match) if entry.match is not None else None,
            effective_from=entry.effective_from,
            prices=PriceSet(
                entry.per_million_tokens.given(),
                tuple(
                    Tier(tier.above_input_tokens, tier.per_million_tokens.given())
                    for tier in entry.tiers
                ),
            ),
            position=index,
        )
        for index, entry in enumerate(file.models)
    )
    default = _plan(file.plans.default, Plan())
    consumers = {c: _plan(p, default) for c, p in file.plans.consumers.items()}
    return PricingConfig(
        currency=file.currency,
        entries=entries,
        default_plan=default,
        consumer_plans=consumers,
        catalogue_url=file.catalogue.url,
        grace=file.stripe.grace,
    )


def parse_duration(value: Any, where: str) -> timedelta:
    """A duration such as ``1h``, ``90m``, ``1h30m``, ``2d`` or ``0`` (units d, h, m, s).

    Raises:
        PricingConfigError: anything else (a bare number other than 0 has no unit).
    """
    try:
        return duration(value)
    except ValueError as exc:
        raise PricingConfigError(f"{where}: {exc}") from None


def parse_pricing_config(data: Mapping[str, Any] | None) -> PricingConfig:
    """Build the pricing configuration from the parsed YAML document (the whole file).

    Raises:
        PricingConfigError: with the path of the offending value.
    """
    return pricing_config(validate_config(data))


def load_pricing_config(path: str | Path | None) -> PricingConfig:
    """Read the pricing sections of the YAML file at ``path`` (``None``: defaults).

    Raises:
        PricingConfigError: the file cannot be read or is invalid (one line naming the
            file, the line and the field).
    """
    return pricing_config(load_config(path))
