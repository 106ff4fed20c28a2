"""``GET /v1/prices``: the prices in use; ``POST /v1/prices/update``: fetch published ones
from the configuration's ``catalogue.url`` (a request cannot name the URL: 422).

Without ``model`` it lists the configuration entries and the catalogue's models (their
prices in force at ``at``, default now); with ``provider`` and ``model`` it shows which
price a call would get and why (the matching of :mod:`meterline.aggregator.pricing`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from meterline.aggregator.auth import require_admin, require_read
from meterline.aggregator.deps import StoreDep
from meterline.aggregator.invoices import PriceUpdateError, update_catalogue
from meterline.aggregator.pricing import price_table
from meterline.aggregator.routes._params import At
from meterline.aggregator.routes._pricing import PricingDep, reset_pricing

router = APIRouter(prefix="/v1/prices", tags=["prices"])


@router.get("", dependencies=[Depends(require_read)])
def get_prices(
    pricing: PricingDep,
    provider: str | None = None,
    model: str | None = None,
    source: Annotated[str | None, Query(pattern="^(config|catalogue)$")] = None,
    at: Annotated[At | None, Query(description="ISO-8601, default now")] = None,
) -> dict[str, Any]:
    when = at or datetime.now(UTC)
    return price_table(pricing, at=when, provider=provider, model=model, source=source)


@router.post("/update", dependencies=[Depends(require_admin)])
async def post_update(request: Request, store: StoreDep, pricing: PricingDep) -> dict[str, Any]:
    body = (await request.body()).strip()
    if request.query_params or body not in (b"", b"{}", b"null"):
        raise HTTPException(
            status_code=422,
            detail="prices update takes no parameters: it fetches from the configuration's "
            f"catalogue.url ({pricing.config.catalogue_url})",
        )
    try:
        result = await run_in_threadpool(
            update_catalogue, store, pricing.catalogue, url=pricing.config.catalogue_url
        )
    except PriceUpdateError as exc:
        raise HTTPException(status_code=502, detail=str(exc)) from None
    reset_pricing(request)
    return result.to_dict()
