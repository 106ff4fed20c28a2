"""Where budgets are defined: the ``budgets:`` section of the configuration file
(read-only through the API) and the ``budgets`` table (``PUT``/``DELETE``).

The section::

    budgets:
      timezone: UTC                 # default of every budget (IANA name)
      reservations:
        ttl_seconds: 300            # default expiry of an unsettled reservation
        max_ttl_seconds: 3600       # the most a caller may ask for
      limits:
        - {consumer: acme, feature: summarize, limit: "25.00", unit: USD,
           period: month, mode: hard, thresholds: [50, 80, 100]}
      rate_limits:                  # enforced with the budgets, at reservation time
        - {consumer: acme, limit: "100000", unit: tokens, per: minute}
        - {consumer: acme, provider: openai, model: gpt-4o, limit: "60", unit: requests,
           per: minute}
        - {consumer: acme, limit: "5.00", unit: USD, per: hour}

Known limit: a replica reads the table at start and sees another replica's changes only
after a restart (one process in the embedded deployment; docs/budgets.md).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meterline.aggregator.budgets._model import Budget, BudgetError, budget_from_dict
from meterline.aggregator.budgets._rates import RateLimit, rate_limit_from_dict
from meterline.aggregator.budgets._tables import (
    BUDGET_COLUMNS,
    RATE_LIMIT_COLUMNS,
    SELECT_BUDGETS,
    SELECT_RATE_LIMITS,
)
from meterline.aggregator.queries import READ_SETTINGS
from meterline.store import Store

DEFAULT_TTL = 300
MAX_TTL = 3600
_SECTION_KEYS = frozenset({"timezone", "reservations", "limits", "rate_limits"})
_RESERVATION_KEYS = frozenset({"ttl_seconds", "max_ttl_seconds"})


@dataclass(frozen=True)
class BudgetsConfig:
    """The ``budgets:`` section."""

    timezone: str = "UTC"
    ttl_seconds: int = DEFAULT_TTL
    max_ttl_seconds: int = MAX_TTL
    limits: tuple[Budget, ...] = field(default=())
    rate_limits: tuple[RateLimit, ...] = field(default=())


def _seconds(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 86_400:
        raise BudgetError(f"budgets.reservations.{where} {value!r} must be whole seconds, 1..86400")
    return value


def parse_budgets_config(section: Any, *, currency: str) -> BudgetsConfig:
    """Validate the ``budgets:`` section (``None``: no budgets).

    Raises:
        BudgetError: naming the entry and field that is wrong.
    """
    if section is None:
        return BudgetsConfig()
    if not isinstance(section, Mapping):
        raise BudgetError("budgets: must be a mapping with timezone, reservations and limits")
    unknown = sorted(set(section) - _SECTION_KEYS)
    if unknown:
        raise BudgetError(
            f"budgets: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_SECTION_KEYS))}"
        )
    timezone = section.get("timezone", "UTC")
    reservations = section.get("reservations") or {}
    if not isinstance(reservations, Mapping) or set(reservations) - _RESERVATION_KEYS:
        raise BudgetError("budgets.reservations: allowed keys are ttl_seconds, max_ttl_seconds")
    ttl = _seconds(reservations.get("ttl_seconds", DEFAULT_TTL), "ttl_seconds")
    max_ttl = _seconds(reservations.get("max_ttl_seconds", MAX_TTL), "max_ttl_seconds")
    if ttl > max_ttl:
        raise BudgetError("budgets.reservations.ttl_seconds must not exceed max_ttl_seconds")
    raw = section.get("limits") or []
    if not isinstance(raw, list):
        raise BudgetError("budgets.limits must be a list of budgets")
    limits: dict[tuple[str, str, str], Budget] = {}
    for i, entry in enumerate(raw):
        where = f"budgets.limits[{i}]"
        if not isinstance(entry, Mapping):
            raise BudgetError(f"{where}: must be a mapping")
        body = {k: v for k, v in entry.items() if k not in ("consumer", "feature")}
        try:
            budget = budget_from_dict(
                entry.get("consumer"),  # type: ignore[arg-type]
                entry.get("feature"),
                body,
                currency=currency,
                default_timezone=timezone,
                source="config",
            )
        except BudgetError as exc:
            raise BudgetError(f"{where}: {exc}") from None
        if budget.key in limits:
            raise BudgetError(f"{where}: a second {budget.period} budget for the same scope")
        limits[budget.key] = budget
    try:
        from meterline.aggregator.budgets._model import _timezone

        _timezone(timezone)
    except BudgetError as exc:
        raise BudgetError(f"budgets.timezone: {exc}") from None
    return BudgetsConfig(
        timezone, ttl, max_ttl, tuple(limits.values()), _rate_limits(section, currency)
    )


def _rate_limits(section: Mapping[str, Any], currency: str) -> tuple[RateLimit, ...]:
    raw = section.get("rate_limits") or []
    if not isinstance(raw, list):
        raise BudgetError("budgets.rate_limits must be a list of rate limits")
    found: dict[tuple[str, ...], RateLimit] = {}
    for i, entry in enumerate(raw):
        where = f"budgets.rate_limits[{i}]"
        if not isinstance(entry, Mapping):
            raise BudgetError(f"{where}: must be a mapping")
        body = {k: v for k, v in entry.items() if k != "consumer"}
        try:
            rate = rate_limit_from_dict(
                entry.get("consumer"), body, currency=currency, source="config"
            )
        except BudgetError as exc:
            raise BudgetError(f"{where}: {exc}") from None
        if rate.key in found:
            raise BudgetError(f"{where}: a second {rate.unit} per {rate.per} for the same scope")
        found[rate.key] = rate
    return tuple(found.values())


def load_budgets_config(path: str | Path | None, *, currency: str) -> BudgetsConfig:
    """The ``budgets:`` section of the YAML file at ``path`` (``None``: no file)."""
    if path is None:
        return BudgetsConfig()
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BudgetError(f"{path}: cannot read the configuration: {exc}") from None
    if not isinstance(data, Mapping):
        return BudgetsConfig()
    try:
        return parse_budgets_config(data.get("budgets"), currency=currency)
    except BudgetError as exc:
        raise BudgetError(f"{path}: {exc}") from None


class Registry:
    """The budgets in force: configuration over the table, cached in memory."""

    def __init__(self, store: Store, config: BudgetsConfig, *, currency: str) -> None:
        self.store = store
        self.config = config
        self.currency = currency
        self._lock = threading.Lock()
        self._stored: dict[tuple[str, str, str], Budget] = {}
        _, rows = store.query(SELECT_BUDGETS, settings=READ_SETTINGS)
        for (definition,) in rows:
            doc = json.loads(definition)
            budget = budget_from_dict(
                doc.pop("consumer"), doc.pop("feature"), doc, currency=currency
            )
            self._stored[budget.key] = budget
        self._configured = {b.key: b for b in config.limits}
        self._stored_rates: dict[tuple[str, ...], RateLimit] = {}
        _, rows = store.query(SELECT_RATE_LIMITS, settings=READ_SETTINGS)
        for (definition,) in rows:
            doc = json.loads(definition)
            rate = rate_limit_from_dict(doc.pop("consumer"), doc, currency=currency)
            self._stored_rates[rate.key] = rate
        self._configured_rates = {r.key: r for r in config.rate_limits}

    # --- rate limits ------------------------------------------------------------------

    def all_rates(self) -> list[RateLimit]:
        with self._lock:
            merged = {**self._stored_rates, **self._configured_rates}
        return [merged[k] for k in sorted(merged)]

    def applicable_rates(self, consumer: str, provider: str, model: str) -> list[RateLimit]:
        return [r for r in self.all_rates() if r.applies_to(consumer, provider, model)]

    def rate_configured(self, key: tuple[str, ...]) -> bool:
        return key in self._configured_rates

    def put_rate(self, rate: RateLimit) -> None:
        self._write_rate(rate, deleted=False)
        with self._lock:
            self._stored_rates[rate.key] = rate

    def delete_rate(self, rate: RateLimit) -> None:
        self._write_rate(rate, deleted=True)
        with self._lock:
            self._stored_rates.pop(rate.key, None)

    def _write_rate(self, rate: RateLimit, *, deleted: bool) -> None:
        doc = {k: v for k, v in rate.to_dict().items() if k != "source" and v is not None}
        row = [
            rate.consumer, rate.provider or "", rate.model or "", rate.unit, rate.per,
            time.time_ns(), int(deleted), json.dumps(doc), datetime.now(UTC),
        ]  # fmt: skip
        self.store.insert_columns("rate_limits", [[v] for v in row], RATE_LIMIT_COLUMNS)

    # --- budgets ----------------------------------------------------------------------

    def all(self) -> list[Budget]:
        with self._lock:
            merged = {**self._stored, **self._configured}
        return [merged[k] for k in sorted(merged)]

    def applicable(self, consumer: str, feature: str | None) -> list[Budget]:
        return [b for b in self.all() if b.applies_to(consumer, feature)]

    def find(self, consumer: str, feature: str | None, period: str | None) -> list[Budget]:
        return [
            b
            for b in self.all()
            if b.consumer == consumer
            and b.feature == feature
            and (period is None or b.period == period)
        ]

    def configured(self, key: tuple[str, str, str]) -> bool:
        return key in self._configured

    def put(self, budget: Budget) -> None:
        self._write(budget, deleted=False)
        with self._lock:
            self._stored[budget.key] = budget

    def delete(self, budget: Budget) -> None:
        self._write(budget, deleted=True)
        with self._lock:
            self._stored.pop(budget.key, None)

    def _write(self, budget: Budget, *, deleted: bool) -> None:
        doc = {k: v for k, v in budget.to_dict().items() if k != "source"}
        row = [
            budget.consumer, budget.feature or "", int(budget.feature is not None),
            budget.period, time.time_ns(), int(deleted), json.dumps(doc),
            datetime.now(UTC),
        ]  # fmt: skip
        self.store.insert_columns("budgets", [[v] for v in row], BUDGET_COLUMNS)
