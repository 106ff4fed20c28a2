"""The ``BudgetService`` dependency: one per app (its ledger holds the live reservations),
built on first use from the ``budgets:`` section of the configuration file."""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from meterline.aggregator.budgets import BudgetError, BudgetService, load_budgets_config
from meterline.aggregator.routes._pricing import PricingDep

_lock = threading.Lock()


def app_budgets(app: Any) -> BudgetService:
    """The app's budget service, built on first use (also for the alert loop of serve).

    Raises:
        BudgetError: the ``budgets:`` section is invalid.
    """
    from meterline.aggregator.routes._pricing import app_pricing

    service = getattr(app.state, "budgets", None)
    if service is None:
        with _lock:
            service = getattr(app.state, "budgets", None)
            if service is None:
                settings = app.state.settings
                currency = app_pricing(app).config.currency
                config = load_budgets_config(settings.config, currency=currency)
                service = BudgetService(
                    app.state.store, config, currency=currency,
                    redis_url=settings.budgets_redis_url,
                )  # fmt: skip
                app.state.budgets = service
    return service


def get_budgets(request: Request, pricing: PricingDep) -> BudgetService:
    del pricing  # built first, so a bad pricing answers as it does everywhere
    try:
        return app_budgets(request.app)
    except BudgetError as exc:
        raise HTTPException(status_code=500, detail=str(exc)) from None


BudgetsDep = Annotated[BudgetService, Depends(get_budgets)]
