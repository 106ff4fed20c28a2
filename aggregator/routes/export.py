"""``GET /v1/export?period=YYYY-MM&format=csv|json``: every consumer's invoice lines.

Columns: consumer, period, currency, provider, model, token_type, quantity,
unit_price_per_million, amount (decimal strings). The body is streamed one consumer at
a time; a finalised month exports the stored invoices.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from meterline.aggregator.deps import StoreDep
from meterline.aggregator.invoices import EXPORT_COLUMNS, export_rows, get_invoices, resolve_period
from meterline.aggregator.routes._pricing import PricingDep

router = APIRouter(prefix="/v1/export", tags=["export"])


class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"


def _csv(rows: Iterator[dict[str, object]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _json(rows: Iterator[dict[str, object]]) -> Iterator[str]:
    yield '{"columns":' + json.dumps(list(EXPORT_COLUMNS)) + ',"rows":['
    first = True
    for row in rows:
        yield ("" if first else ",") + json.dumps(row, separators=(",", ":"))
        first = False
    yield "]}"


@router.get("")
def get_export(
    store: StoreDep,
    pricing: PricingDep,
    period: Annotated[str | None, Query(description="UTC month, YYYY-MM")] = None,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: Annotated[datetime | None, Query()] = None,
    format: ExportFormat = ExportFormat.csv,
) -> StreamingResponse:
    try:
        resolved = resolve_period(period, from_, to)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    views = get_invoices(store, pricing, resolved)
    rows = (row for view in views.values() for row in export_rows(view.invoice))
    name = resolved.label.replace("/", "_").replace(":", "")
    if format is ExportFormat.csv:
        body, media = _csv(rows), "text/csv; charset=utf-8"
    else:
        body, media = _json(rows), "application/json"
    return StreamingResponse(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="meterline-{name}.{format.value}"'},
    )
