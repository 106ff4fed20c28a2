"""The root of meterline's exception tree, and the two exceptions the app may see.

:class:`BudgetExceeded` and :class:`RateLimited` are the only exceptions meterline's
instrumentation raises into user code (from the SDK call whose reservation was refused,
``METERLINE_BUDGETS=enforce``). They are importable as ``meterline.BudgetExceeded`` and
``meterline.RateLimited``. Raised through the openai / anthropic SDKs they are instances
of a subclass that also derives from the SDK's base error, so the SDK lets them through
as they are (no retry, no ``APIConnectionError``); ``except meterline.BudgetExceeded``
catches them either way.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class MeterlineError(Exception):
    """Base class for meterline's own errors."""


class BudgetExceeded(MeterlineError):
    """A call was not sent: its worst case does not fit a hard budget (or the budget
    could not be checked and ``METERLINE_BUDGETS_FAIL=closed``).

    Amounts are ``Decimal`` in the budget's ``unit`` (a currency, or ``tokens``);
    ``None`` when the aggregator did not say (fail-closed).
    """

    def __init__(
        self,
        reason: str,
        *,
        consumer: str | None = None,
        feature: str | None = None,
        budget: dict[str, Any] | None = None,
        spent: Decimal | None = None,
        reserved: Decimal | None = None,
        estimate: Decimal | None = None,
        unit: str | None = None,
        policy: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.consumer = consumer
        self.feature = feature
        self.budget = budget
        """The budget that refused the call, as the aggregator states it (limit, period…)."""
        self.spent = spent
        self.reserved = reserved
        self.estimate = estimate
        """The call's worst case."""
        self.unit = unit
        self.policy = policy

    def __str__(self) -> str:
        who = self.consumer if self.feature is None else f"{self.consumer}/{self.feature}"
        parts = [f"budget exceeded for {who!r}: {self.reason}"]
        if self.budget is not None:
            limit, period = self.budget.get("limit"), self.budget.get("period")
            parts.append(
                f"(limit {limit} {self.unit or ''} per {period}, spent {self.spent}, "
                f"reserved {self.reserved}, this call up to {self.estimate})"
            )
        return " ".join(parts)


class RateLimited(MeterlineError):
    """A call was not sent: a rate limit of the consumer is reached.

    ``retry_after`` is the number of seconds until the call would fit, or ``None`` when it
    never fits as it is (the call alone exceeds the limit). ``METERLINE_RATE_LIMIT_WAIT``
    makes the guard wait by itself, up to that many seconds in all, before raising.
    ``limit`` is the rate limit as the aggregator states it (limit, unit, per, used…).
    """

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None,
        consumer: str | None = None,
        feature: str | None = None,
        limit: dict[str, Any] | None = None,
        estimate: Decimal | None = None,
        unit: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.consumer = consumer
        self.feature = feature
        self.limit = limit
        self.estimate = estimate
        """The call's amount in the rate limit's ``unit`` (tokens, requests or money)."""
        self.unit = unit

    def __str__(self) -> str:
        after = (
            "it never fits" if self.retry_after is None else f"retry after {self.retry_after:g} s"
        )
        return f"rate limited for {self.consumer!r}: {self.reason} ({after})"
