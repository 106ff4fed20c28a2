"""SQL of finalised invoices, their adjustments, and stored price catalogue snapshots.

Tables from migration 2 (``meterline/store/migrations.py``). Reads use ``FINAL`` where
the table is a ReplacingMergeTree so a retried write counts once.
"""

from __future__ import annotations

from typing import Any

from meterline.aggregator.tenancy import Scope

PERIOD_SQL = """
SELECT Revision, FinalizedAt, Currency, CatalogueSource
FROM {db}.billing_periods FINAL
WHERE Period = {period:String}
"""
"""The period's finalisation (no row: open)."""

LATEST_INVOICES_SQL = """
SELECT ConsumerId, argMax(Revision, Revision) AS revision, argMax(Document, Revision) AS document
FROM {db}.invoices FINAL
WHERE Period = {period:String} AND ({all:UInt8} OR ConsumerId = {consumer:String})
    AND ({scope_all:UInt8} OR ConsumerId = {scope_consumer:String})
GROUP BY ConsumerId
ORDER BY ConsumerId
"""
"""The latest revision of each stored invoice of a period (or of one consumer)."""

ADJUSTMENTS_SQL = """
SELECT ConsumerId, Revision, CreatedAt, Currency, Amount, Reason
FROM {db}.invoice_adjustments
WHERE Period = {period:String} AND ({all:UInt8} OR ConsumerId = {consumer:String})
    AND ({scope_all:UInt8} OR ConsumerId = {scope_consumer:String})
ORDER BY ConsumerId, CreatedAt
"""
"""Adjustments recorded by ``reprice`` (each against one invoice revision)."""

KNOWN_CONSUMER_SQL = """
SELECT 1 FROM {db}.llm_usage WHERE ConsumerId = {consumer:String}
UNION ALL
SELECT 1 FROM {db}.invoices WHERE ConsumerId = {consumer:String}
LIMIT 1
"""
"""Any usage ever stored for the consumer (valid, failed or invalid), or a stored invoice."""

LATEST_CATALOGUE_SQL = """
SELECT FetchedAt, Source, Data FROM {db}.price_catalogue ORDER BY FetchedAt DESC LIMIT 1
"""
"""The newest stored catalogue snapshot (``prices update``)."""

INVOICE_COLUMNS = (
    "Period",
    "ConsumerId",
    "Revision",
    "IssuedAt",
    "Currency",
    "Subtotal",
    "Markup",
    "Total",
    "FailedRequests",
    "UnpricedRequests",
    "Document",
)
PERIOD_COLUMNS = ("Period", "Revision", "FinalizedAt", "Currency", "CatalogueSource")
ADJUSTMENT_COLUMNS = (
    "Period",
    "ConsumerId",
    "Revision",
    "CreatedAt",
    "Currency",
    "Amount",
    "Reason",
    "Document",
)
CATALOGUE_COLUMNS = ("FetchedAt", "Source", "Data")


def scope(period: str, consumer: str | None, *, tenancy: Scope) -> dict[str, Any]:
    """Parameters selecting a period's rows, for one consumer or all, within ``tenancy``
    (whose rows may be read at all: :mod:`meterline.aggregator.tenancy`)."""
    return {
        "period": period,
        "all": int(consumer is None),
        "consumer": consumer or "",
        "scope_all": int(tenancy.consumer is None),
        "scope_consumer": tenancy.consumer or "",
    }
