"""``GET /v1/invoices/{consumer}``: one consumer's invoice for a month or a range.

Money fields are decimal strings. A finalised month returns the stored invoice
(``X-Meterline-Invoice-Status: final; revision=N``), an open one is computed now
(``open``). ``known`` is false for a consumer that never had usage in any period (nor an
invoice): an empty invoice for a mistyped id is not a real empty bill.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response

from meterline.aggregator.auth import ScopeDep
from meterline.aggregator.deps import StoreDep
from meterline.aggregator.invoices import (
    InvoiceView,
    consumer_known,
    get_invoices,
    resolve_period,
)
from meterline.aggregator.pricing import money_str
from meterline.aggregator.routes._params import From, To
from meterline.aggregator.routes._pricing import PricingDep
from meterline.aggregator.tenancy import NotVisible

router = APIRouter(prefix="/v1/invoices", tags=["invoices"])

STATUS_HEADER = "X-Meterline-Invoice-Status"


def status_value(view: InvoiceView) -> str:
    if view.finalization is None:
        return "open"
    value = f"final; revision={view.finalization.revision}"
    if view.adjustments:
        value += f"; adjustments={money_str(view.adjustments)}"
    return value


@router.get("/{consumer:path}")  # a consumer id may hold "/" (sent as %2F)
def get_invoice(
    consumer: str,
    store: StoreDep,
    pricing: PricingDep,
    response: Response,
    scope: ScopeDep,
    period: Annotated[str | None, Query(description="UTC month, YYYY-MM")] = None,
    from_: Annotated[From | None, Query(alias="from", description="ISO-8601")] = None,
    to: Annotated[To | None, Query(description="ISO-8601, exclusive")] = None,
) -> dict[str, Any]:
    """The consumer's invoice: lines, subtotal, markup, total, unpriced usage; ``known``:
    whether the consumer ever had usage.

    A consumer key asking for another consumer gets 404, the same answer whether that
    consumer exists or not."""
    if not scope.admits(consumer):
        raise HTTPException(status_code=404, detail="Not Found")
    try:
        resolved = resolve_period(period, from_, to)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    try:
        view = get_invoices(store, pricing, resolved, scope=scope, consumer=consumer)[consumer]
    except NotVisible:
        raise HTTPException(status_code=404, detail="Not Found") from None
    response.headers[STATUS_HEADER] = status_value(view)
    return {**view.invoice.to_dict(), "known": consumer_known(store, view.invoice)}
