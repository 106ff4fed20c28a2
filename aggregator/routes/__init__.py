"""The API's routers, collected in one place."""

from fastapi import APIRouter, Depends

from meterline.aggregator.auth import get_principal
from meterline.aggregator.routes import (
    alerts,
    budgets,
    estimate,
    export,
    grafana,
    health,
    invoices,
    keys,
    overview,
    periods,
    prices,
    rate_limits,
    reservations,
    stripe,
    usage,
)

api_router = APIRouter(dependencies=[Depends(get_principal)])
"""Every ``/v1`` route: the caller is resolved (401 without a valid key when one is set);
each route also declares what it needs (:data:`~meterline.aggregator.auth.REQUIREMENTS`)."""
api_router.include_router(usage.router)
api_router.include_router(invoices.router)
api_router.include_router(periods.router)
api_router.include_router(export.router)
api_router.include_router(prices.router)
api_router.include_router(keys.router)
api_router.include_router(budgets.router)
api_router.include_router(reservations.router)
api_router.include_router(rate_limits.router)
api_router.include_router(estimate.router)
api_router.include_router(stripe.router)
api_router.include_router(overview.router)
api_router.include_router(grafana.router)
api_router.include_router(alerts.router)

public_router = APIRouter()
public_router.include_router(health.router)
public_router.include_router(overview.page_router)

__all__ = ["api_router", "public_router"]
