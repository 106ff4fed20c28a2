"""Budget definitions and their state.

A budget limits what one consumer (optionally one feature of it) may spend in a period:
``day``, ``week`` (ISO, Monday 00:00), ``month`` or ``total``, in the budget's time zone
(UTC unless configured). The limit is in the pricing currency (money, plan markup
included) or in ``tokens`` (input + output tokens, cache and reasoning included as the
conventions count them). ``hard`` budgets are enforced, ``soft`` ones only report (and
alert, issue 11 §5).

A budget is identified by (consumer, feature, period): a consumer may have a day and a
month budget, consumer-wide and per feature; a call must fit every one that applies.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any, Literal

from meterline.errors import MeterlineError

PERIODS = ("day", "week", "month", "total")
MODES = ("soft", "hard")
POLICIES = ("block", "degrade", "checkpoint")
TOKENS = "tokens"
DEFAULT_THRESHOLDS = (50, 80, 100)

Period = Literal["day", "week", "month", "total"]


class BudgetError(MeterlineError, ValueError):
    """A budget definition is invalid (the API answers 422, the config check fails)."""


@dataclass(frozen=True)
class Degrade:
    """How a call that does not fit may be rewritten so that it does."""

    max_tokens: bool = False
    """Cap ``max_tokens`` to what is left."""
    model: Mapping[str, str] = field(default_factory=dict)
    """Requested model → the cheaper model to use instead."""

    def to_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "model": dict(self.model)}


@dataclass(frozen=True)
class Budget:
    """One budget."""

    consumer: str
    feature: str | None
    """``None``: every call of the consumer."""
    limit: Decimal
    unit: str
    """The pricing currency (ISO 4217) or ``tokens``."""
    period: Period
    mode: Literal["soft", "hard"] = "hard"
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    """Alert thresholds, percent of the limit."""
    policy: Literal["block", "degrade", "checkpoint"] = "block"
    """What the app does with a call that does not fit a hard budget."""
    degrade: Degrade | None = None
    timezone: str = "UTC"
    source: Literal["api", "config"] = "api"
    """Where it is defined: the API (stored) or the configuration file (read-only)."""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.consumer, self.feature or "", self.period)

    @property
    def in_tokens(self) -> bool:
        return self.unit == TOKENS

    def applies_to(self, consumer: str, feature: str | None) -> bool:
        return consumer == self.consumer and (self.feature is None or self.feature == feature)

    def to_dict(self) -> dict[str, Any]:
        from meterline.aggregator.pricing import money_str

        return {
            "consumer": self.consumer,
            "feature": self.feature,
            "limit": money_str(self.limit),
            "unit": self.unit,
            "period": self.period,
            "mode": self.mode,
            "thresholds": list(self.thresholds),
            "policy": self.policy,
            "degrade": self.degrade.to_dict() if self.degrade is not None else None,
            "timezone": self.timezone,
            "source": self.source,
        }


def _limit(value: Any, unit: str) -> Decimal:
    if isinstance(value, (bool, float)):
        raise BudgetError(f'limit {value!r} must be a decimal string such as "25.00"')
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise BudgetError(f'limit {value!r} is not a decimal number such as "25.00"') from None
    if not amount.is_finite() or amount < 0:
        raise BudgetError(f"limit {value!r} must be a finite amount >= 0")
    if unit == TOKENS and amount != amount.to_integral_value():
        raise BudgetError(f"limit {value!r} must be a whole number of tokens")
    if amount.adjusted() > 30:
        raise BudgetError(f"limit {value!r} is too large")
    return amount.copy_abs()  # "-0" is 0 (exact: abs() would round to the context)


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> Any:
    if value not in allowed:
        raise BudgetError(f"{name} {value!r} is not one of: {', '.join(allowed)}")
    return value


def _thresholds(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1000 for v in value
    ):
        raise BudgetError(f"thresholds {value!r} must be a list of percents such as [50, 80, 100]")
    return tuple(sorted(set(value)))


def _degrade(value: Any) -> Degrade | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"max_tokens", "model"}:
        raise BudgetError(
            "degrade must be a mapping with max_tokens (true/false) and/or model "
            "({requested: cheaper}), e.g. {max_tokens: true, model: {gpt-4o: gpt-4o-mini}}"
        )
    max_tokens = value.get("max_tokens", False)
    models = value.get("model") or {}
    if not isinstance(max_tokens, bool):
        raise BudgetError(f"degrade.max_tokens {max_tokens!r} must be true or false")
    if not isinstance(models, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in models.items()
    ):
        raise BudgetError(
            "degrade.model must map model ids to model ids, e.g. {gpt-4o: gpt-4o-mini}"
        )
    return Degrade(max_tokens=max_tokens, model=dict(models))


def _timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise BudgetError(f"timezone {value!r} must be an IANA name such as 'Europe/Paris'")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise BudgetError(
            f"timezone {value!r} is unknown: use an IANA name such as 'Europe/Paris'"
        ) from None
    return value


BODY_KEYS = frozenset(
    {"limit", "unit", "period", "mode", "thresholds", "policy", "degrade", "timezone"}
)


def budget_from_dict(
    consumer: str,
    feature: str | None,
    body: Mapping[str, Any],
    *,
    currency: str,
    default_timezone: str = "UTC",
    source: Literal["api", "config"] = "api",
) -> Budget:
    """Validate a budget's fields (the API's body, or one entry of ``budgets:``).

    Raises:
        BudgetError: a field is missing, unknown or invalid (one line, saying what to do).
    """
    unknown = sorted(set(body) - BODY_KEYS)
    if unknown:
        raise BudgetError(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(BODY_KEYS))}")
    if not isinstance(consumer, str) or not consumer:
        raise BudgetError("a budget needs a consumer id")
    if feature is not None and (not isinstance(feature, str) or not feature):
        raise BudgetError("feature must be a non-empty string (omit it for every feature)")
    for name in ("limit", "unit", "period"):
        if name not in body:
            raise BudgetError(f"missing field {name!r}")
    unit = body["unit"]
    if unit != TOKENS and unit != currency:
        raise BudgetError(f"unit {unit!r} must be the pricing currency {currency!r} or 'tokens'")
    mode = _choice(body.get("mode", "hard"), MODES, "mode")
    degrade = _degrade(body.get("degrade"))
    policy = _choice(
        body.get("policy", "degrade" if degrade is not None else "block"), POLICIES, "policy"
    )
    if policy == "degrade" and degrade is None:
        raise BudgetError("policy 'degrade' needs a degrade section, e.g. {max_tokens: true}")
    return Budget(
        consumer=consumer,
        feature=feature,
        limit=_limit(body["limit"], unit),
        unit=unit,
        period=_choice(body["period"], PERIODS, "period"),
        mode=mode,
        thresholds=_thresholds(body.get("thresholds", list(DEFAULT_THRESHOLDS))),
        policy=policy,
        degrade=degrade,
        timezone=_timezone(body.get("timezone", default_timezone)),
        source=source,
    )


@dataclass(frozen=True)
class BudgetState:
    """A budget and what is used of it in the current period."""

    budget: Budget
    period_start: datetime
    period_end: datetime
    spent: Decimal
    """What the invoices count (currency: the invoice total; tokens: billable tokens),
    plus settled reservations whose usage is not stored yet."""
    reserved: Decimal
    """Live (unsettled) reservations."""

    @property
    def remaining(self) -> Decimal:
        return self.budget.limit - self.spent - self.reserved

    def fits(self, amount: Decimal) -> bool:
        """Whether ``amount`` (in the budget's unit: money, or tokens) fits what is left;
        a soft budget always lets a call through."""
        return self.budget.mode == "soft" or amount <= self.remaining

    def to_dict(self) -> dict[str, Any]:
        from meterline.aggregator._instants import iso

        b = self.budget
        return {
            "consumer": b.consumer,
            "feature": b.feature,
            "limit": shown(b.limit, b.in_tokens),
            "unit": b.unit,
            "period": b.period,
            "mode": b.mode,
            "spent": shown(self.spent, b.in_tokens),
            "reserved": shown(self.reserved, b.in_tokens),
            "remaining": shown(self.remaining, b.in_tokens),
            "period_start": iso(self.period_start),
            "period_end": iso(self.period_end),
            "thresholds": list(b.thresholds),
            "policy": b.policy,
            "degrade": b.degrade.to_dict() if b.degrade is not None else None,
            "timezone": b.timezone,
            "source": b.source,
        }


def shown(value: Decimal, in_tokens: bool) -> str:
    """How an amount is shown: tokens as a whole number; money with at least the
    invoice's two decimals (``2.40``, ``0.00``) and every further one that is not a
    trailing zero (``0.0072``), never an exponent."""
    from meterline.aggregator.pricing import MONEY_CONTEXT, money_str

    with localcontext(MONEY_CONTEXT):  # a limit may have 31 digits before the point
        if in_tokens:
            return money_str(value.quantize(Decimal(1)))
        normal = value.normalize()
        if normal.as_tuple().exponent > -2:  # type: ignore[operator]
            normal = normal.quantize(Decimal("0.01"))
        return money_str(normal)
