"""Matching: which price applies to a call (provider, models, timestamp, input tokens).

Order, for the response model then the request model at each step:
1. a configuration entry with that exact model id (in force at the call's time),
2. a configuration ``match`` pattern,
3. the catalogue's own matching (dated ids such as ``claude-sonnet-4-20250514``,
   aliases, ``provider/model`` prefixes); a configuration entry whose exact id is the
   catalogue's canonical id overrides the catalogue from its ``effective_from`` on.
No match: the call is *unpriced* (never $0).

Among several configuration entries in force, the newest ``effective_from`` wins, then
the later entry in the file. The catalogue is used only when the currency is USD
(its prices are in USD).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from meterline.aggregator.pricing._catalogue import Catalogue, CatalogueModel, canonical_provider
from meterline.aggregator.pricing._config import PriceEntry, PricingConfig
from meterline.aggregator.pricing._prices import PriceSet

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PriceMatch:
    """The prices of a call and where they came from."""

    prices: PriceSet
    """The price set in force at the call's time."""
    source: str
    """``config`` or ``catalogue``."""
    matched: str
    """The configuration entry's model id or ``match:pattern``, or ``provider/model-id``."""
    effective_from: datetime | None
    """Start of the configuration entry's validity (``None`` for the catalogue)."""


@dataclass(frozen=True)
class RatingGrid:
    """How the rating query splits calls so that each group has exactly one price."""

    change_points: tuple[datetime, ...] = ()
    """Instants where some involved price changes (ascending)."""
    thresholds: tuple[int, ...] = ()
    """Input-token tier thresholds of the involved prices (ascending)."""
    time_of_day: tuple[tuple[tuple[str, str, str], ...], tuple[int, ...]] = ((), ())
    """(provider, response model, request model) keys with time-of-day prices, and the
    boundaries (seconds after UTC midnight) that split their days."""

    def covers(self, other: RatingGrid, start: datetime | None, end: datetime | None) -> bool:
        """True when this grid splits at least where ``other`` does within [start, end)."""
        points = {
            p
            for p in other.change_points
            if (start is None or p > start) and (end is None or p < end)
        }
        return (
            points <= set(self.change_points)
            and set(other.thresholds) <= set(self.thresholds)
            and set(other.time_of_day[0]) <= set(self.time_of_day[0])
            and set(other.time_of_day[1]) <= set(self.time_of_day[1])
        )

    def representative_input(self, tier_bucket: int) -> int:
        """An input-token count inside tier bucket ``tier_bucket`` (0: at most the first
        threshold; k: above the k-th)."""
        return 0 if tier_bucket == 0 else self.thresholds[tier_bucket - 1] + 1


def _in_force(entry: PriceEntry, at: datetime) -> bool:
    return entry.effective_from is None or entry.effective_from <= at


def _newest(entries: Iterable[PriceEntry], at: datetime) -> PriceEntry | None:
    best: PriceEntry | None = None
    for entry in entries:
        if not _in_force(entry, at):
            continue
        if best is None or (entry.effective_from or _EPOCH, entry.position) >= (
            best.effective_from or _EPOCH,
            best.position,
        ):
            best = entry
    return best


class PriceBook:
    """Configuration entries over the catalogue: answers "what did this call cost per
    million tokens of each type"."""

    def __init__(self, config: PricingConfig, catalogue: Catalogue | None) -> None:
        self.config = config
        self.catalogue = catalogue if config.currency == "USD" else None
        self._seen: frozenset[tuple[str, str, str]] = frozenset()
        self._seen_lock = threading.Lock()
        self._exact: dict[tuple[str, str], list[PriceEntry]] = {}
        self._patterns: dict[str, list[PriceEntry]] = {}
        for entry in config.entries:
            provider = canonical_provider(entry.provider)
            if entry.model is not None:
                self._exact.setdefault((provider, entry.model.lower()), []).append(entry)
            else:
                self._patterns.setdefault(provider, []).append(entry)

    @property
    def seen(self) -> frozenset[tuple[str, str, str]]:
        """(provider, response model, request model) keys rated so far: the rating query
        starts from their grid instead of asking the store for the distinct models."""
        return self._seen

    def remember(self, keys: Iterable[tuple[str, str, str]]) -> None:
        with self._seen_lock:
            self._seen = self._seen | frozenset(keys)

    @staticmethod
    def _refs(response_model: str, request_model: str) -> list[str]:
        return [m for m in dict.fromkeys((response_model, request_model)) if m]

    def _exact_entries(self, provider: str, ref: str) -> list[PriceEntry]:
        return self._exact.get((provider, ref.lower()), [])

    def _pattern_entries(self, provider: str, ref: str) -> list[PriceEntry]:
        return [e for e in self._patterns.get(provider, ()) if e.match.search(ref)]  # type: ignore[union-attr]

    def _catalogue_models(self, provider: str, refs: list[str]) -> list[CatalogueModel]:
        if self.catalogue is None:
            return []
        found = (self.catalogue.find(provider, ref) for ref in refs)
        return [m for m in found if m is not None]

    def match(
        self, provider: str, response_model: str, request_model: str, at: datetime
    ) -> PriceMatch | None:
        """The prices of a call at ``at`` (UTC), or ``None`` when it is unpriced."""
        canonical = canonical_provider(provider)
        refs = self._refs(response_model, request_model)
        for lookup in (self._exact_entries, self._pattern_entries):
            for ref in refs:
                entry = _newest(lookup(canonical, ref), at)
                if entry is not None:
                    return PriceMatch(entry.prices, "config", entry.label, entry.effective_from)
        for model in self._catalogue_models(provider, refs):
            entry = _newest(self._exact_entries(canonical, model.model_id), at)
            if entry is not None:
                return PriceMatch(entry.prices, "config", entry.label, entry.effective_from)
            return PriceMatch(model.prices_at(at), "catalogue", model.label, None)
        return None

    def grid(self, keys: Iterable[tuple[str, str, str]]) -> RatingGrid:
        """The splits needed to rate calls of these (provider, response model, request
        model) keys: every change point and tier threshold that could apply to them."""
        points: set[datetime] = set()
        thresholds: set[int] = set()
        tod_keys: list[tuple[str, str, str]] = []
        tod_bounds: set[int] = set()
        for key in keys:
            provider, response_model, request_model = key
            canonical = canonical_provider(provider)
            refs = self._refs(response_model, request_model)
            entries: list[PriceEntry] = []
            for ref in refs:
                entries += self._exact_entries(canonical, ref)
                entries += self._pattern_entries(canonical, ref)
            for model in self._catalogue_models(provider, refs):
                entries += self._exact_entries(canonical, model.model_id)
                points.update(model.change_points)
                thresholds.update(model.thresholds)
                if model.time_of_day_boundaries:
                    tod_keys.append(key)
                    tod_bounds.update(model.time_of_day_boundaries)
            for entry in entries:
                if entry.effective_from is not None:
                    points.add(entry.effective_from)
                thresholds.update(entry.prices.thresholds)
        return RatingGrid(
            change_points=tuple(sorted(points)),
            thresholds=tuple(sorted(thresholds)),
            time_of_day=(tuple(tod_keys), tuple(sorted(tod_bounds))),
        )
