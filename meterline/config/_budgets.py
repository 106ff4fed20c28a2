"""The ``budgets`` section (docs/budgets.md; its ``rate_limits`` list: docs/rate-limits.md):
declared here so the file check knows it.

Its shape is checked here; the budgets themselves (limits, units against the currency,
periods, time zones, rate limits) by the aggregator's own parser,
:func:`meterline.aggregator.budgets.parse_budgets_config`, called from this model's
validator so that a bad budget stops ``serve`` / ``config check`` at start, in the one-line
form of the other sections (naming ``budgets.limits[i]``), instead of at first use. The
file's currency reaches it through the validation context (``ConfigFile`` is validated with
``context={"currency": …}``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo, model_validator

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

    @model_validator(mode="after")
    def _budgets_parse(self, info: ValidationInfo) -> BudgetsSection:
        """The aggregator's parser on the section: one error, as a one-line message."""
        if not self.limits and not self.rate_limits and self.timezone == "UTC":
            return self  # nothing to check (and the class default is built at import)
        from meterline.aggregator.budgets import parse_budgets_config
        from meterline.errors import MeterlineError

        context = info.context if isinstance(info.context, dict) else {}
        currency = context.get("currency")
        try:
            parse_budgets_config(
                self.model_dump(), currency=currency if isinstance(currency, str) else "USD"
            )
        except MeterlineError as exc:
            message = str(exc)
            prefix = "budgets."
            raise ValueError(
                message[len(prefix) :] if message.startswith(prefix) else message
            ) from None
        return self
