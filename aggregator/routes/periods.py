"""Billing periods: finalise a month, re-price a finalised one.

``GET /v1/periods/{YYYY-MM}`` (open or final), ``POST …/finalize`` (store every
invoice, once the month ended ``stripe.grace`` ago; ``allow_open=true`` for tests),
``POST …/reprice?force=&dry_run=`` (difference as adjustments, or re-issue). A period
changed by another request at the same time answers 409 (nothing written).
Reading a period's state needs ``read``; finalising and re-pricing need the admin key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from meterline.aggregator.auth import require_admin, require_read
from meterline.aggregator.deps import StoreDep
from meterline.aggregator.invoices import InvoiceError, finalization, finalize, month, reprice
from meterline.aggregator.routes._pricing import PricingDep

router = APIRouter(prefix="/v1/periods", tags=["invoices"])


def _month(period: str) -> str:
    try:
        return month(period).label
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


@router.get("/{period}", dependencies=[Depends(require_read)])
def get_period(period: str, store: StoreDep) -> dict[str, Any]:
    label = _month(period)
    final = finalization(store, label)
    if final is None:
        return {"period": label, "status": "open"}
    return {
        "period": final.period,
        "status": "final",
        "revision": final.revision,
        "finalized_at": final.finalized_at.isoformat().replace("+00:00", "Z"),
        "currency": final.currency,
        "catalogue": final.catalogue_source,
    }


@router.post("/{period}/finalize", dependencies=[Depends(require_admin)])
def post_finalize(
    period: str, store: StoreDep, pricing: PricingDep, allow_open: bool = False
) -> dict[str, Any]:
    try:
        final, invoices = finalize(store, pricing, _month(period), allow_open=allow_open)
    except InvoiceError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    return {
        "period": final.period,
        "revision": final.revision,
        "invoices": [i.to_dict() for i in invoices.values()],
    }


@router.post("/{period}/reprice", dependencies=[Depends(require_admin)])
def post_reprice(
    period: str, store: StoreDep, pricing: PricingDep, force: bool = False, dry_run: bool = False
) -> dict[str, Any]:
    try:
        result = reprice(store, pricing, _month(period), force=force, dry_run=dry_run)
    except InvoiceError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    return result.to_dict()
