"""The ``budgets`` section (docs/budgets.md; its ``rate_limits`` list: docs/rate-limits.md):
declared here so the file check knows it.

Its shape is checked with the rest of the file; the budgets themselves (limits, units
against the currency, periods, time zones) are validated by
:func:`meterline.aggregator.budgets.parse_budgets_config` when the aggregator first uses
them, with one-line errors naming ``budgets.limits[i]``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from meterline.config._base import Section, none_as_empty_list


class ReservationsSection(Section):
    """``budgets.reservations``: how long an unsettled reservation lives."""

    ttl_seconds: int = Field(300, ge=1, le=86_400)
    max_ttl_seconds: int = Field(3600, ge=1, le=86_400)


class BudgetsSection(Section):
    """``budgets``: the default time zone, reservation expiry, and the budgets."""

    timezone: str = "UTC"
    reservations: ReservationsSection = ReservationsSection()
    limits: Annotated[list[dict[str, Any]], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list
    )
    rate_limits: Annotated[list[dict[str, Any]], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list
    )
    """Tokens, requests or money per minute / hour per consumer (optionally per provider
    and model); validated by the aggregator like ``limits``."""
