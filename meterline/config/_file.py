"""The whole configuration file: one field per section.

To add a section (``stripe``, ``budgets``, …): write its :class:`Section` model in a
module of its own here and declare it below with a default, so files without it stay
valid. A key that no section declares is an error ("did you mean …?"), never ignored.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field

from meterline.config._alerts import AlertsSection
from meterline.config._base import Section, none_as_empty_list
from meterline.config._budgets import BudgetsSection
from meterline.config._pricing import (
    CatalogueSection,
    Currency,
    ModelPriceSection,
    PlansSection,
)
from meterline.config._stripe import StripeSection


class ConfigFile(Section):
    """meterline's YAML configuration file (every section optional)."""

    currency: Currency = "USD"
    """ISO 4217 code of every amount."""
    models: Annotated[list[ModelPriceSection], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list
    )
    """Configured prices, in file order (later entries win ties)."""
    plans: PlansSection = PlansSection()
    """Markups and failed-call billing, by consumer."""
    catalogue: CatalogueSection = CatalogueSection()
    """Where ``prices update`` fetches published prices."""
    stripe: StripeSection = StripeSection()
    """Billing through Stripe (so far: the finalisation grace)."""
    budgets: BudgetsSection = BudgetsSection()
    """Budgets and reservation expiry (docs/budgets.md)."""
    alerts: AlertsSection = AlertsSection()
    """Alert webhooks, rolling-window rules, the check interval (docs/alerts.md)."""

    def summary(self) -> str:
        """A one-line description, for ``config check`` and reload logs."""
        plans = len(self.plans.consumers) + (self.plans.default is not None)
        return f"currency {self.currency}, {len(self.models)} model prices, {plans} plans"
