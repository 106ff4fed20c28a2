"""Rate limits: tokens, requests or money per minute or per hour (issue 11 §4).

A rate limit belongs to a consumer and optionally one provider and/or one model; it
counts every reservation of a call it applies to. It is enforced at reservation time,
in the same atomic step as the budgets (the ledger's lock, or the Redis script).

**Sliding window** (an exact log), not a token bucket nor fixed windows: a call is let
through only when the reservations of the last ``W`` seconds (60 or 3600) plus this one
stay within the limit. Then *every* window of length ``W`` — wherever it starts — holds at
most the limit: the last call admitted into any window was checked against a window that
contains all of that window's calls. A token bucket of capacity ``C`` refilling ``C`` per
``W`` lets ``2C`` through in one window (a full bucket, then its refill), and fixed
windows let ``2C`` through across their edge (``C`` at 12:00:59, ``C`` at 12:01:00); the
issue asks that no window overshoot, so neither qualifies. The cost is memory: each
consumer's reservations of the last hour are kept (one small entry per call).

Amounts: ``requests`` counts 1 per call; ``tokens`` the reservation's tokens (input +
``max_tokens`` while reserved, the actual input + output once settled); a currency the
reservation's money (worst case, then actual). A released reservation (the call was not
sent) leaves the window; an expired one stays (the call may have run). A model without a
price never passes a money rate limit. ``retry_after`` is the time until enough of the
window's oldest calls leave it for this one to fit (``None``: it never fits alone).

Known limit: settle replaces the reserved amount by the actual, so a call whose actual
usage outgrew its reservation (input underestimated) can push a window past the limit
after the fact; later calls then wait until it leaves the window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from meterline.aggregator.budgets._model import BudgetError, _limit

REQUESTS = "requests"
RATE_TOKENS = "tokens"
WINDOWS: dict[str, int] = {"minute": 60, "hour": 3600}
"""Window length in seconds, per ``per``."""
LONGEST = timedelta(seconds=max(WINDOWS.values()))
"""How long a reservation is kept for the windows."""
BODY_KEYS = frozenset({"limit", "unit", "per", "provider", "model"})


@dataclass(frozen=True)
class RateLimit:
    """One rate limit."""

    consumer: str
    provider: str | None
    """``None``: every provider."""
    model: str | None
    """``None``: every model (the requested model is matched)."""
    limit: Decimal
    unit: str
    """``tokens``, ``requests`` or the pricing currency."""
    per: Literal["minute", "hour"]
    source: Literal["api", "config"] = "api"

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.consumer, self.provider or "", self.model or "", self.unit, self.per)

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=WINDOWS[self.per])

    @property
    def in_money(self) -> bool:
        return self.unit not in (REQUESTS, RATE_TOKENS)

    def applies_to(self, consumer: str, provider: str, model: str) -> bool:
        return (
            self.consumer == consumer
            and (self.provider is None or self.provider == provider)
            and (self.model is None or self.model == model)
        )

    def amount(self, tokens: int, money: Decimal | None) -> Decimal:
        """A reservation's amount in this limit's unit (unpriced money counts 0: such a
        call is refused by a money limit before it is reserved)."""
        if self.unit == REQUESTS:
            return Decimal(1)
        if self.unit == RATE_TOKENS:
            return Decimal(tokens)
        return money if money is not None else Decimal(0)

    def to_dict(self) -> dict[str, Any]:
        from meterline.aggregator.pricing import money_str

        return {
            "consumer": self.consumer, "provider": self.provider, "model": self.model,
            "limit": money_str(self.limit), "unit": self.unit, "per": self.per,
            "source": self.source,
        }  # fmt: skip


def rate_limit_from_dict(
    consumer: Any, body: Mapping[str, Any], *, currency: str,
    source: Literal["api", "config"] = "api",
) -> RateLimit:  # fmt: skip
    """Validate a rate limit's fields (the API's body, or one entry of ``rate_limits``).

    Raises:
        BudgetError: a field is missing, unknown or invalid (one line).
    """
    unknown = sorted(set(body) - BODY_KEYS)
    if unknown:
        raise BudgetError(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(BODY_KEYS))}")
    if not isinstance(consumer, str) or not consumer:
        raise BudgetError("a rate limit needs a consumer id")
    for name in ("limit", "unit", "per"):
        if name not in body:
            raise BudgetError(f"missing field {name!r}")
    unit = body["unit"]
    if unit not in (RATE_TOKENS, REQUESTS, currency):
        raise BudgetError(
            f"unit {unit!r} must be 'tokens', 'requests' or the pricing currency {currency!r}"
        )
    per = body["per"]
    if per not in WINDOWS:
        raise BudgetError(f"per {per!r} is not one of: {', '.join(WINDOWS)}")
    scope = {}
    for name in ("provider", "model"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise BudgetError(f"{name} must be a non-empty string (omit it for every {name})")
        scope[name] = value
    limit = _limit(body["limit"], RATE_TOKENS if unit == REQUESTS else unit)
    return RateLimit(consumer, scope["provider"], scope["model"], limit, unit, per, source)


@dataclass(frozen=True)
class RateCheck:
    """One rate limit a reserve is checked against."""

    limit: RateLimit
    amount: Decimal
    """The candidate's amount in the limit's unit."""


@dataclass(frozen=True)
class Entry:
    """A reservation as the windows see it."""

    created_at: datetime
    provider: str
    model: str
    tokens: int
    money: Decimal | None


def window_use(
    entries: Iterable[Entry], check: RateCheck, now: datetime
) -> tuple[Decimal, bool, float | None]:
    """What the window starting at ``now - W`` holds of ``check``'s limit (every entry
    after that start, including any stamped after ``now`` by a concurrent reserve),
    whether the candidate fits, and — when it does not — the seconds until it would
    (``None``: never, it is larger than the limit)."""
    limit = check.limit
    start = now - limit.window
    p, m = limit.provider, limit.model
    inside = [
        e for e in entries
        if e.created_at > start and (p is None or p == e.provider) and (m is None or m == e.model)
    ]  # fmt: skip
    # sums without Decimal where the unit is whole (the common, hot path)
    if limit.unit == REQUESTS:
        used = Decimal(len(inside))
    elif limit.unit == RATE_TOKENS:
        used = Decimal(sum(e.tokens for e in inside))
    else:
        used = sum((e.money or Decimal(0) for e in inside), Decimal(0))
    if used + check.amount <= limit.limit:
        return used, True, 0.0
    if check.amount > limit.limit:
        return used, False, None
    left = used
    for e in sorted(inside, key=lambda e: e.created_at):  # only when refused
        left -= limit.amount(e.tokens, e.money)
        if left + check.amount <= limit.limit:
            return used, False, (e.created_at + limit.window - now).total_seconds()
    return used, False, None  # unreachable: an empty window fits an amount within the limit
