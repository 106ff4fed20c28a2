"""The ``currency``, ``models``, ``plans`` and ``catalogue`` sections of meterline's YAML
configuration, and ``stripe.grace`` (when a month may be finalised).

Contract (docs/pricing.md): amounts are decimal strings (YAML floats are refused so no
binary rounding sneaks in); ``effective_from`` is a date or a UTC datetime; each model
entry names a ``provider`` and exactly one of ``model`` (exact id) or ``match`` (a
regular expression, searched in the model id). ``catalogue.url`` is the only place
``prices update`` fetches from (a request cannot name another). Other top-level sections
(and the rest of ``stripe``) belong to other features and are ignored here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from meterline.aggregator._instants import check_instant
from meterline.aggregator.pricing._prices import TOKEN_TYPES, PriceSet, Tier
from meterline.errors import MeterlineError

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

DEFAULT_CATALOGUE_URL = (
    "https://raw.githubusercontent.com/pydantic/genai-prices/refs/heads/main/"
    "prices/new_data/v2/data.json"
)
"""Where genai-prices publishes its data (its own auto-update URL): ``catalogue.url``'s
default."""

DEFAULT_GRACE = timedelta(hours=1)
"""``stripe.grace``'s default: how long after a month's end late usage is waited for
before the month may be finalised (Stripe's own invoices wait 1 h by default)."""

_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")


class PricingConfigError(MeterlineError, ValueError):
    """The pricing part of the configuration file is invalid."""


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


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, (bool, float)):
        raise PricingConfigError(
            f'{where}: amount {value!r} must be a quoted decimal string such as "2.50"'
        )
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PricingConfigError(f"{where}: {value!r} is not a decimal amount") from None
    if not amount.is_finite() or amount < 0:
        raise PricingConfigError(f"{where}: {value!r} must be a finite, non-negative amount")
    return amount


def _prices(value: Any, where: str) -> dict[str, Decimal]:
    if not isinstance(value, Mapping) or not value:
        raise PricingConfigError(f"{where}: expected a mapping of token type to price")
    prices: dict[str, Decimal] = {}
    for key, amount in value.items():
        if key not in TOKEN_TYPES:
            raise PricingConfigError(
                f"{where}: unknown price key {key!r}, allowed: {', '.join(TOKEN_TYPES)}"
            )
        prices[key] = _decimal(amount, f"{where}.{key}")
    return prices


def _when(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        try:  # a change point is a bound of the rating query: it must be storable
            return check_instant(value, name=f"{where}:")
        except ValueError as exc:
            raise PricingConfigError(str(exc)) from None
    if isinstance(value, date):
        return _when(datetime(value.year, value.month, value.day, tzinfo=UTC), where)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return _when(parsed, where)
    raise PricingConfigError(f"{where}: effective_from {value!r} is not a date (YYYY-MM-DD)")


def _entry(raw: Any, index: int) -> PriceEntry:
    where = f"models[{index}]"
    if not isinstance(raw, Mapping):
        raise PricingConfigError(f"{where}: expected a mapping")
    allowed = {"provider", "model", "match", "effective_from", "per_million_tokens", "tiers"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise PricingConfigError(
            f"{where}: unknown key {unknown[0]!r}, allowed: {', '.join(sorted(allowed))}"
        )
    provider = raw.get("provider")
    if not isinstance(provider, str) or not provider:
        raise PricingConfigError(f"{where}: 'provider' is required")
    model, pattern = raw.get("model"), raw.get("match")
    if (model is None) == (pattern is None):
        raise PricingConfigError(f"{where}: give exactly one of 'model' or 'match'")
    compiled = None
    if pattern is not None:
        try:
            compiled = re.compile(str(pattern))
        except re.error as exc:
            raise PricingConfigError(f"{where}: invalid match pattern {pattern!r}: {exc}") from None
    tiers: list[Tier] = []
    for t_index, raw_tier in enumerate(raw.get("tiers") or ()):
        t_where = f"{where}.tiers[{t_index}]"
        if not isinstance(raw_tier, Mapping) or "above_input_tokens" not in raw_tier:
            raise PricingConfigError(
                f"{t_where}: expected above_input_tokens and per_million_tokens"
            )
        threshold = raw_tier["above_input_tokens"]
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise PricingConfigError(
                f"{t_where}: above_input_tokens {threshold!r} must be an int ≥ 0"
            )
        tiers.append(Tier(threshold, _prices(raw_tier.get("per_million_tokens"), t_where)))
    return PriceEntry(
        provider=provider,
        model=str(model) if model is not None else None,
        match=compiled,
        effective_from=_when(raw.get("effective_from"), f"{where}.effective_from"),
        prices=PriceSet(
            _prices(raw.get("per_million_tokens"), f"{where}.per_million_tokens"), tuple(tiers)
        ),
        position=index,
    )


def _plan(raw: Any, where: str, base: Plan) -> Plan:
    if raw is None:
        return base
    if not isinstance(raw, Mapping):
        raise PricingConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(raw) - {"markup_percent", "bill_failed_requests"})
    if unknown:
        raise PricingConfigError(
            f"{where}: unknown key {unknown[0]!r}, allowed: bill_failed_requests, markup_percent"
        )
    markup = base.markup_percent
    if "markup_percent" in raw:
        markup = _decimal(raw["markup_percent"], f"{where}.markup_percent")
    bill_failed = raw.get("bill_failed_requests", base.bill_failed_requests)
    if not isinstance(bill_failed, bool):
        raise PricingConfigError(f"{where}.bill_failed_requests: expected true or false")
    return Plan(markup_percent=markup, bill_failed_requests=bill_failed)


def _catalogue_url(raw: Any) -> str:
    if raw is None:
        return DEFAULT_CATALOGUE_URL
    if not isinstance(raw, Mapping):
        raise PricingConfigError("catalogue: expected a mapping with 'url'")
    unknown = sorted(set(raw) - {"url"})
    if unknown:
        raise PricingConfigError(f"catalogue: unknown key {unknown[0]!r}, allowed: url")
    url = raw.get("url", DEFAULT_CATALOGUE_URL)
    from urllib.parse import urlsplit

    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise PricingConfigError(
            f"catalogue.url: {url!r} is not an http(s) URL of genai-prices data "
            f"(default {DEFAULT_CATALOGUE_URL})"
        )
    return url


def parse_duration(value: Any, where: str) -> timedelta:
    """A duration such as ``1h``, ``90m``, ``1h30m``, ``2d`` or ``0`` (units d, h, m, s).

    Raises:
        PricingConfigError: anything else (a bare number other than 0 has no unit).
    """
    if value == 0 and not isinstance(value, bool | float):
        return timedelta(0)
    found = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None or not any(found.groups()):
        raise PricingConfigError(
            f"{where}: {value!r} is not a duration such as '1h', '30m' or '1h30m'"
        )
    days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def _grace(stripe: Any) -> timedelta:
    if stripe is None:
        return DEFAULT_GRACE
    if not isinstance(stripe, Mapping):
        raise PricingConfigError("stripe: expected a mapping")
    if stripe.get("grace") is None:
        return DEFAULT_GRACE
    return parse_duration(stripe["grace"], "stripe.grace")


def parse_pricing_config(data: Mapping[str, Any] | None) -> PricingConfig:
    """Build the pricing configuration from the parsed YAML document.

    Raises:
        PricingConfigError: with the path of the offending value.
    """
    data = data or {}
    if not isinstance(data, Mapping):
        raise PricingConfigError("the configuration file must be a YAML mapping")
    currency = data.get("currency", "USD")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise PricingConfigError(f"currency: {currency!r} is not an ISO 4217 code such as 'USD'")
    raw_models = data.get("models") or []
    if not isinstance(raw_models, list):
        raise PricingConfigError("models: expected a list of entries")
    entries = tuple(_entry(raw, i) for i, raw in enumerate(raw_models))
    plans = data.get("plans") or {}
    if not isinstance(plans, Mapping):
        raise PricingConfigError("plans: expected a mapping with 'default' and 'consumers'")
    default = _plan(plans.get("default"), "plans.default", Plan())
    consumers_raw = plans.get("consumers") or {}
    if not isinstance(consumers_raw, Mapping):
        raise PricingConfigError("plans.consumers: expected a mapping of consumer id to plan")
    consumers = {
        str(c): _plan(p, f"plans.consumers.{c}", default) for c, p in consumers_raw.items()
    }
    return PricingConfig(
        currency=currency,
        entries=entries,
        default_plan=default,
        consumer_plans=consumers,
        catalogue_url=_catalogue_url(data.get("catalogue")),
        grace=_grace(data.get("stripe")),
    )


def load_pricing_config(path: str | Path | None) -> PricingConfig:
    """Read the pricing sections of the YAML file at ``path`` (``None``: defaults).

    Raises:
        PricingConfigError: the file cannot be read or is invalid.
    """
    if path is None:
        return PricingConfig()
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingConfigError(
            f"cannot read the configuration file {str(path)!r}: {exc}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PricingConfigError(f"{str(path)!r} is not valid YAML: {exc}") from None
    try:
        return parse_pricing_config(data)
    except PricingConfigError as exc:
        raise PricingConfigError(f"{path}: {exc}") from None
