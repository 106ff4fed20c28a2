"""The Stripe export (issue 10 §2-§3; docs/stripe.md): usage reaches Stripe exactly once.

- :class:`StripeConfig` — the ``stripe:`` section (mapping, window, grace, meters).
- :func:`customer_for` / :class:`CustomerMap` — consumer → Stripe customer (the API's
  assignment wins over the file).
- :func:`sync` / :func:`run_sync` — closed windows to meter events, exactly once
  (:class:`SyncSummary`); :class:`SyncLoop` runs it inside ``meterline serve``.
- :func:`status`, :func:`reconcile`, :func:`setup_meters` — what ``meterline stripe``
  shows and checks.
- :func:`push_invoices` — invoice mode (§4): finalised invoices → items on draft
  invoices (:class:`PushSummary`), through :class:`InvoicesClient`.
- :class:`MeterEventsClient` / :class:`StripeEnv` — the official SDK, carefully.

Tables: :mod:`meterline.store.stripe_schema`.
"""

from meterline.aggregator.stripe._client import (
    MeterEventsClient,
    Retrying,
    StripeAuthError,
    StripeEnv,
    StripeRequestError,
)
from meterline.aggregator.stripe._config import (
    DEFAULT_GRACE,
    MeterConfig,
    StripeConfig,
    StripeConfigError,
    load_stripe_config,
    parse_duration,
    parse_stripe_config,
)
from meterline.aggregator.stripe._invoice_client import InvoicesClient
from meterline.aggregator.stripe._ledger import Ledger, LedgerRow, identifier
from meterline.aggregator.stripe._mapping import (
    CustomerMap,
    customer_for,
    load_customer_map,
    set_customer,
)
from meterline.aggregator.stripe._push_invoices import PushSummary, push_invoices
from meterline.aggregator.stripe._service import (
    CustomerMissingError,
    ReconcileRow,
    SyncLoop,
    assign_customer,
    reconcile,
    reconcile_report,
    setup,
    setup_meters,
    status,
    sync,
)
from meterline.aggregator.stripe._sync import SyncSummary, run_sync
from meterline.aggregator.stripe._windows import WindowValue, window_values

__all__ = [
    "DEFAULT_GRACE",
    "CustomerMap",
    "CustomerMissingError",
    "InvoicesClient",
    "Ledger",
    "LedgerRow",
    "MeterConfig",
    "MeterEventsClient",
    "PushSummary",
    "ReconcileRow",
    "Retrying",
    "StripeAuthError",
    "StripeConfig",
    "StripeConfigError",
    "StripeEnv",
    "StripeRequestError",
    "SyncLoop",
    "SyncSummary",
    "WindowValue",
    "assign_customer",
    "customer_for",
    "identifier",
    "load_customer_map",
    "load_stripe_config",
    "parse_duration",
    "parse_stripe_config",
    "push_invoices",
    "reconcile",
    "reconcile_report",
    "run_sync",
    "set_customer",
    "setup",
    "setup_meters",
    "status",
    "sync",
    "window_values",
]
