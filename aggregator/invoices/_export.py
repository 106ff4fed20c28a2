"""The billing export of invoice views: :func:`meterline.aggregator._export.export_rows`
over each invoice's JSON form, with the adjustments recorded against it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from meterline.aggregator._export import export_rows
from meterline.aggregator.invoices._service import InvoiceView
from meterline.aggregator.pricing import money_str


def iter_export_rows(views: Iterable[InvoiceView]) -> Iterator[dict[str, Any]]:
    """Every row of the export of ``views``, one invoice after another."""
    for view in views:
        adjustments = money_str(view.adjustments) if view.adjustments else None
        yield from export_rows(view.invoice.to_dict(), adjustments=adjustments)
