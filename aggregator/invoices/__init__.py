"""Invoices: stored usage × prices → per-consumer invoices, finalisation, re-pricing,
and the billing export.

Rounding: line amounts half-up to the currency's minor unit; ``subtotal`` the sum of
lines; ``markup`` rounded half-up on the subtotal; ``total = subtotal + markup``.
"""

from meterline.aggregator._export import EXPORT_COLUMNS, ExportStatus, export_rows
from meterline.aggregator.invoices._build import build_invoices
from meterline.aggregator.invoices._catalogue_store import (
    DEFAULT_PRICES_URL,
    PriceChange,
    PriceUpdate,
    PriceUpdateError,
    diff_catalogues,
    load_store_pricing,
    stored_catalogue,
    update_catalogue,
)
from meterline.aggregator.invoices._claims import CLAIM_LEASE
from meterline.aggregator.invoices._errors import InvoiceError, PeriodBusyError, PeriodOpenError
from meterline.aggregator.invoices._export import iter_export_rows
from meterline.aggregator.invoices._model import (
    InvalidUsage,
    Invoice,
    InvoiceLine,
    UnbilledUsage,
    UnpricedUsage,
)
from meterline.aggregator.invoices._period import Period, between, month, resolve_period
from meterline.aggregator.invoices._service import (
    Finalization,
    InvoiceView,
    RepriceLine,
    RepriceResult,
    check_ended,
    compute_invoices,
    consumer_known,
    finalization,
    finalize,
    get_invoices,
    rate_usage,
    reprice,
)
from meterline.aggregator.invoices._usage_costs import UsageCosts, usage_costs

__all__ = [
    "CLAIM_LEASE",
    "DEFAULT_PRICES_URL",
    "EXPORT_COLUMNS",
    "ExportStatus",
    "Finalization",
    "InvalidUsage",
    "Invoice",
    "InvoiceError",
    "InvoiceLine",
    "InvoiceView",
    "Period",
    "PeriodBusyError",
    "PeriodOpenError",
    "PriceChange",
    "PriceUpdate",
    "PriceUpdateError",
    "RepriceLine",
    "RepriceResult",
    "UnbilledUsage",
    "UnpricedUsage",
    "UsageCosts",
    "between",
    "build_invoices",
    "check_ended",
    "compute_invoices",
    "consumer_known",
    "diff_catalogues",
    "export_rows",
    "finalization",
    "finalize",
    "get_invoices",
    "iter_export_rows",
    "load_store_pricing",
    "month",
    "rate_usage",
    "reprice",
    "resolve_period",
    "stored_catalogue",
    "update_catalogue",
    "usage_costs",
]
