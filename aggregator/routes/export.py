"""``GET /v1/export?period=YYYY-MM&format=csv|json``: every consumer's invoice as rows.

Columns: :data:`~meterline.aggregator.invoices.EXPORT_COLUMNS` (money as decimal
strings). ``status`` says what a row is (``priced``, ``markup``, ``adjustment``,
``unpriced``, ``failed``); rows without a price or an amount have them empty (CSV) or
``null`` (JSON), never 0 — see :mod:`meterline.aggregator._export`. The body is streamed
one consumer at a time; a finalised month exports the stored invoices. A consumer key
exports its own consumer's rows only.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from meterline.aggregator.auth import ScopeDep
from meterline.aggregator.deps import StoreDep
from meterline.aggregator.invoices import (
    EXPORT_COLUMNS,
    get_invoices,
    iter_export_rows,
    resolve_period,
)
from meterline.aggregator.routes._params import From, To
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
    scope: ScopeDep,
    period: Annotated[str | None, Query(description="UTC month, YYYY-MM")] = None,
    from_: Annotated[From | None, Query(alias="from", description="ISO-8601")] = None,
    to: Annotated[To | None, Query(description="ISO-8601, exclusive")] = None,
    format: ExportFormat = ExportFormat.csv,
) -> StreamingResponse:
    try:
        resolved = resolve_period(period, from_, to)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    views = get_invoices(store, pricing, resolved, scope=scope)
    rows = iter_export_rows(views.values())
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
