"""The ``BudgetService`` dependency: one per app (its ledger holds the live reservations),
built on first use from the ``budgets:`` section of the configuration file."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from meterline.aggregator.budgets import BudgetError, BudgetService, load_budgets_config
from meterline.aggregator.deps import SettingsDep, StoreDep
from meterline.aggregator.routes._pricing import PricingDep

_lock = threading.Lock()


def get_budgets(
    request: Request, settings: SettingsDep, store: StoreDep, pricing: PricingDep
) -> BudgetService:
    service = getattr(request.app.state, "budgets", None)
    if service is None:
        with _lock:
            service = getattr(request.app.state, "budgets", None)
            if service is None:
                currency = pricing.config.currency
                try:
                    config = load_budgets_config(settings.config, currency=currency)
                    service = BudgetService(
                        store, config, currency=currency, redis_url=settings.budgets_redis_url
                    )
                except BudgetError as exc:
                    raise HTTPException(status_code=500, detail=str(exc)) from None
                request.app.state.budgets = service
    return service


BudgetsDep = Annotated[BudgetService, Depends(get_budgets)]
