"""Budgets and atomic reservations (issue 11 §1, §3 server side; docs/budgets.md).

- :class:`Budget` / :class:`BudgetState` — a limit per consumer (and feature) and period,
  and what is spent (the invoices' money), reserved and left of it now.
- :class:`BudgetService` — budget states (:meth:`~BudgetService.budgets_for`, whose
  states answer :meth:`~BudgetState.fits`), and reserve / settle / release.
- :func:`window` — a budget's current period in UTC.
- :func:`parse_budgets_config` — the ``budgets:`` section of the configuration file.
- :class:`RateLimit` — tokens, requests or money per minute / hour (sliding windows,
  checked in the same atomic step as the budgets: :mod:`._rates`).
- :class:`Ledger` — the live reservations of one process; ``_redis.RedisLedger`` shares
  them between replicas (``METERLINE_BUDGETS_REDIS_URL``).
"""

from meterline.aggregator.budgets._cost import Cost, actual, check_usage, worst_case
from meterline.aggregator.budgets._ledger import Ledger, LedgerUnavailable, Reservation
from meterline.aggregator.budgets._model import (
    PERIODS,
    TOKENS,
    Budget,
    BudgetError,
    BudgetState,
    Degrade,
    budget_from_dict,
)
from meterline.aggregator.budgets._rates import (
    WINDOWS,
    RateCheck,
    RateLimit,
    rate_limit_from_dict,
)
from meterline.aggregator.budgets._registry import (
    BudgetsConfig,
    Registry,
    load_budgets_config,
    parse_budgets_config,
)
from meterline.aggregator.budgets._service import (
    BudgetService,
    Decision,
    ReservationError,
    ReserveRequest,
    UnknownReservation,
)
from meterline.aggregator.budgets._window import window

__all__ = [
    "PERIODS",
    "TOKENS",
    "WINDOWS",
    "Budget",
    "BudgetError",
    "BudgetService",
    "BudgetState",
    "BudgetsConfig",
    "Cost",
    "Decision",
    "Degrade",
    "Ledger",
    "LedgerUnavailable",
    "RateCheck",
    "RateLimit",
    "Registry",
    "Reservation",
    "ReservationError",
    "ReserveRequest",
    "UnknownReservation",
    "actual",
    "budget_from_dict",
    "check_usage",
    "load_budgets_config",
    "parse_budgets_config",
    "rate_limit_from_dict",
    "window",
    "worst_case",
]
