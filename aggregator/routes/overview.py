"""The overview page at ``/`` and the one request behind it, ``GET /v1/overview``.

Contract:
- ``GET /`` and ``GET /page/<file>`` serve a static page (HTML, its script and style, and
  the vendored charting library uPlot; docs/overview-page.md); they hold no data and need
  no key (``/`` says only whether the API needs one, so that the page asks before it
  makes a request). Every figure
  the page shows comes from ``/v1`` — ``GET /v1/overview`` and ``GET /v1/budgets`` — with
  the same authentication as the rest of ``/v1``: the page asks for a key, keeps it in the
  tab's ``sessionStorage`` and sends it as ``Authorization: Bearer``; no cookie (a cookie
  would be sent with requests other sites forge). A consumer key sees only its consumer.
- ``GET /v1/overview?period=YYYY-MM``: the period's invoices (the same documents as
  ``/v1/invoices`` and the export: stored ones once finalised), largest total first,
  their unpriced usage, and the billed spend per UTC day by consumer and by model from the
  rated-usage table (exact sums, rounded to the currency's minor unit per day for the
  charts — a day's points can differ from the invoice by that rounding; the totals are
  the invoices').
"""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from meterline.aggregator.auth import ScopeDep
from meterline.aggregator.deps import SettingsDep, StoreDep
from meterline.aggregator.invoices import get_invoices, resolve_period
from meterline.aggregator.routes._pricing import PricingDep

router = APIRouter(prefix="/v1/overview", tags=["overview"])
page_router = APIRouter(include_in_schema=False)

_PAGE_FILES = {
    "overview.js": "text/javascript; charset=utf-8",
    "overview.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
"""The page's files (a fixed list: no path from the request reaches the file system)."""

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' blob: data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> bytes:
    return files("meterline.aggregator.page").joinpath(name).read_bytes()


@page_router.get("/")
def page(settings: SettingsDep) -> Response:
    """The overview page (static; its data comes from ``/v1`` with the caller's key). It
    says whether the API needs a key (what any ``/v1`` request would tell), so that the
    page asks for one before making requests bound to fail."""
    html = _file("index.html")
    if not settings.admin_keys:
        html = html.replace(b'<body data-key="required">', b'<body data-key="open">')
    return Response(html, media_type="text/html; charset=utf-8", headers=_HEADERS)


@page_router.get("/page/{name}")
def page_file(name: str) -> Response:
    media = _PAGE_FILES.get(name)
    if media is None:
        raise HTTPException(status_code=404, detail="Not Found")
    return Response(_file(name), media_type=media, headers=_HEADERS)


@router.get("")
def get_overview(
    store: StoreDep,
    pricing: PricingDep,
    scope: ScopeDep,
    period: Annotated[str, Query(description="UTC month, YYYY-MM")],
) -> dict[str, Any]:
    """What the overview page shows for ``period`` (see the module docstring)."""
    from meterline.aggregator.rated import daily_spends

    try:
        resolved = resolve_period(period, None, None)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    views = get_invoices(store, pricing, resolved, scope=scope)
    invoices = sorted((v.invoice for v in views.values()), key=lambda i: (-i.total, i.consumer))
    quantum = Decimal(1).scaleb(-pricing.config.minor_units)
    days = []
    day = resolved.start
    while day < resolved.end:
        days.append(day.date().isoformat())
        day += timedelta(days=1)

    index = {d: i for i, d in enumerate(days)}
    spends = daily_spends(
        store, pricing, resolved.start, resolved.end, by=("consumer", "model"), scope=scope
    )

    def series(by: str) -> dict[str, list[str]]:
        points = spends[by]
        out: dict[str, list[str]] = {}
        for (d, name), amount in sorted(points.items()):
            values = out.setdefault(name, ["0"] * len(days))
            values[index[d]] = str(amount.quantize(quantum, rounding=ROUND_HALF_UP))
        return out

    return {
        "period": resolved.label,
        "currency": pricing.config.currency,
        "total": str(sum((i.total for i in invoices), Decimal(0))),
        "unpriced_requests": sum(u.requests for i in invoices for u in i.unpriced),
        "consumers": [
            {
                "consumer": i.consumer,
                "subtotal": str(i.subtotal),
                "markup": str(i.markup),
                "total": str(i.total),
                "unpriced_requests": sum(u.requests for u in i.unpriced),
                "invoice_url": f"/v1/invoices/{_quote(i.consumer)}?period={resolved.label}",
            }
            for i in invoices
        ],
        "unpriced": [
            {
                "consumer": i.consumer,
                "provider": u.provider,
                "model": u.model,
                "requests": u.requests,
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
            }
            for i in invoices
            for u in i.unpriced
        ],
        "days": days,
        "by_consumer": series("consumer"),
        "by_model": series("model"),
    }


def _quote(consumer: str) -> str:
    from urllib.parse import quote

    return quote(consumer, safe="")
