"""genai-prices' bundled, dated catalogue behind a small lookup (works offline).

Contract: prices are read from the data bundled with the installed genai-prices (or
from a snapshot that ``meterline prices update`` fetched and stored), never downloaded
at start-up. Only token prices are used (input, cache read/write, output, reasoning);
per-request, audio, image and search prices are outside meterline's usage rows.
Request-context variants (batch processing, fast mode) are not applied: the standard
price is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, time
from decimal import Decimal
from functools import cache, cached_property
from typing import Any

from meterline.aggregator.pricing._prices import PriceSet, Tier

logger = logging.getLogger(__name__)

PROVIDER_ALIASES: dict[str, str] = {
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "gemini": "google",
    "vertex_ai": "google",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "az.ai.openai": "azure",
    "az.ai.inference": "azure",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "mistral_ai": "mistral",
    "x_ai": "x-ai",
    "xai": "x-ai",
}
"""OpenTelemetry ``gen_ai.provider.name`` values → genai-prices provider ids."""

_KEYS: dict[str, str] = {
    "input_mtok": "input",
    "cache_read_mtok": "cache_read",
    "cache_write_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
    "output_mtok": "output",
    "output_reasoning_mtok": "reasoning",
}


def canonical_provider(name: str) -> str:
    """The provider id prices are keyed by (semconv names mapped to genai-prices ids)."""
    key = name.strip().lower()
    return PROVIDER_ALIASES.get(key, key)


def _price_set(model_price: Any) -> PriceSet:
    from genai_prices.types import TieredPrices

    base: dict[str, Any] = {}
    by_start: dict[int, dict[str, Any]] = {}
    for raw_key, token_type in _KEYS.items():
        value = model_price.__dict__.get(raw_key)
        if value is None:
            continue
        if isinstance(value, TieredPrices):
            base[token_type] = value.base
            for tier in value.tiers:
                by_start.setdefault(tier.start, {})[token_type] = tier.price
        else:
            base[token_type] = value
    tiers = tuple(Tier(start, prices) for start, prices in sorted(by_start.items()))
    return PriceSet(base, tiers)


def _model_prices(model: Any) -> list[Any]:
    from genai_prices.types import ModelPrice

    prices = model.prices
    return [prices] if isinstance(prices, ModelPrice) else [c.prices for c in prices]


class PriceScaleError(ValueError):
    """Catalogue data holds a price finer than the rated-usage table (not loaded)."""


def check_scale(providers: list[Any], *, source: str) -> None:
    """Refuse data with a price finer than the rated-usage table holds (it would be
    rounded there, and every amount meterline shows is read from that table).

    Raises:
        PriceScaleError: one line naming the first such price.
    """
    from genai_prices.types import TieredPrices

    from meterline.config._pricing import decimals
    from meterline.store.rated_schema import PRICE_SCALE

    for provider in providers:
        for model in provider.models:
            for model_price in _model_prices(model):
                for raw_key in _KEYS:
                    value = model_price.__dict__.get(raw_key)
                    if value is None:
                        continue
                    values = (
                        [value.base, *(t.price for t in value.tiers)]
                        if isinstance(value, TieredPrices)
                        else [value]
                    )
                    for v in values:
                        if decimals(Decimal(v)) > PRICE_SCALE:
                            raise PriceScaleError(
                                f"{source}: {provider.id}/{model.id} {raw_key} {Decimal(v):f}"
                                f" has more than {PRICE_SCALE} decimals (the rated-usage table"
                                f" holds prices to {PRICE_SCALE}); not loaded"
                            )


@cache
def _check_bundled(source: str) -> None:
    """The installed package's data is checked once per process."""
    from genai_prices.data import providers

    check_scale(list(providers), source=source)


def _seconds(value: time) -> int:
    if value.tzinfo is not None:
        value = datetime.combine(datetime(1970, 1, 1).date(), value).astimezone(UTC).time()
    return value.hour * 3600 + value.minute * 60 + value.second


@dataclass(frozen=True, eq=False)
class CatalogueModel:
    """One catalogue model as matched for a provider and model id."""

    provider_id: str
    """genai-prices provider id."""
    model_id: str
    """genai-prices model id (the canonical id: dated ids map to it)."""
    info: Any
    """The genai-prices ``ModelInfo``."""

    @property
    def label(self) -> str:
        return f"{self.provider_id}/{self.model_id}"

    def prices_at(self, at: datetime) -> PriceSet:
        """The standard prices in force at ``at`` (UTC)."""
        model_price = self.info.get_prices(at)
        cache = self._converted
        key = id(model_price)
        if key not in cache:
            cache[key] = _price_set(model_price)
        return cache[key]

    @cached_property
    def _converted(self) -> dict[int, PriceSet]:
        return {}

    @cached_property
    def _conditional(self) -> list[Any]:
        from genai_prices.types import ModelPrice

        return [] if isinstance(self.info.prices, ModelPrice) else list(self.info.prices)

    @cached_property
    def change_points(self) -> tuple[datetime, ...]:
        """Instants (UTC midnights) where a dated price starts."""
        from genai_prices.types import StartDateConstraint

        points = set()
        for cond in self._conditional:
            if isinstance(cond.constraint, StartDateConstraint):
                d = cond.constraint.start_date
                points.add(datetime(d.year, d.month, d.day, tzinfo=UTC))
        return tuple(sorted(points))

    @cached_property
    def time_of_day_boundaries(self) -> tuple[int, ...]:
        """Seconds after UTC midnight where a time-of-day price starts or ends."""
        from genai_prices.types import TimeOfDateConstraint

        bounds = set()
        for cond in self._conditional:
            if isinstance(cond.constraint, TimeOfDateConstraint):
                bounds.add(_seconds(cond.constraint.start_time))
                bounds.add(_seconds(cond.constraint.end_time))
        bounds.discard(0)
        return tuple(sorted(bounds))

    @cached_property
    def thresholds(self) -> frozenset[int]:
        from genai_prices.types import ModelPrice

        prices = (
            [self.info.prices]
            if isinstance(self.info.prices, ModelPrice)
            else [c.prices for c in self.info.prices]
        )
        found: set[int] = set()
        for mp in prices:
            found.update(_price_set(mp).thresholds)
        return frozenset(found)


class Catalogue:
    """The dated price catalogue (genai-prices data), with cached lookups."""

    def __init__(
        self,
        providers: list[Any],
        *,
        source: str,
        version: str | None = None,
        checked: bool = False,
    ) -> None:
        from genai_prices.data_snapshot import DataSnapshot

        if not checked:
            check_scale(providers, source=source)
        self.providers = providers
        self.source = source
        """Where the data came from: ``genai-prices <version> (bundled)`` or a fetch."""
        self.version = version or source
        """Identifies the data (a stored snapshot: its source and fetch time); rated
        usage is rated again when it changes."""
        self._snapshot = DataSnapshot(providers=providers, from_auto_update=False)
        self._cache: dict[tuple[str, str], CatalogueModel | None] = {}

    @classmethod
    def bundled(cls) -> Catalogue:
        """The data shipped inside the installed genai-prices package."""
        import genai_prices
        from genai_prices.data import providers

        source = f"genai-prices {genai_prices.__version__} (bundled)"
        _check_bundled(source)
        return cls(list(providers), source=source, checked=True)

    @classmethod
    def from_raw(cls, raw: Any, *, source: str, version: str | None = None) -> Catalogue:
        """Data in genai-prices' published JSON form (a list of providers).

        Raises:
            ValueError: the payload is not genai-prices provider data.
        """
        from genai_prices.types import _providers_from_raw  # the documented JSON's loader

        if not isinstance(raw, list):
            raise ValueError("expected genai-prices data: a JSON list of providers")
        return cls(_providers_from_raw(raw), source=source, version=version)

    def _provider(self, provider_id: str) -> Any | None:
        if not provider_id:
            return None
        try:
            return self._snapshot.find_provider(None, provider_id, None)
        except LookupError:
            return None

    def _find(self, provider: Any | None, ref: str) -> CatalogueModel | None:
        if provider is not None:
            info = provider.find_model(ref, all_providers=self.providers)
            return CatalogueModel(provider.id, info.id, info) if info is not None else None
        try:
            found_provider, info = self._snapshot.find_provider_model(ref, None, None, None)
        except LookupError:
            return None
        return CatalogueModel(found_provider.id, info.id, info)

    def find(self, provider: str, model: str) -> CatalogueModel | None:
        """The catalogue model for a call, or ``None``.

        A known provider is searched (with genai-prices' own matching: dated ids,
        aliases, its fallback providers); an unknown or empty provider is inferred from
        the model id. A ``prefix/model`` id is also tried as provider ``prefix``.
        """
        key = (provider, model)
        if key in self._cache:
            return self._cache[key]
        ref = model.strip().lower()
        found: CatalogueModel | None = None
        if ref:
            known = self._provider(canonical_provider(provider))
            found = self._find(known, ref)
            if found is None and "/" in ref:
                prefix, rest = ref.rsplit("/", 1)
                prefixed = self._provider(canonical_provider(prefix.rsplit("/", 1)[-1]))
                found = self._find(prefixed or known, rest)
        self._cache[key] = found
        return found
