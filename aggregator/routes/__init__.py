"""The API's routers, collected in one place."""

from fastapi import APIRouter, Depends

from meterline.aggregator.deps import require_api_key
from meterline.aggregator.routes import export, health, invoices, periods, prices, usage

api_router = APIRouter(dependencies=[Depends(require_api_key)])
"""Every ``/v1`` route: guarded by the admin key when one is set."""
api_router.include_router(usage.router)
api_router.include_router(invoices.router)
api_router.include_router(periods.router)
api_router.include_router(export.router)
api_router.include_router(prices.router)

public_router = APIRouter()
public_router.include_router(health.router)

__all__ = ["api_router", "public_router"]
