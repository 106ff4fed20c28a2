"""A local Stripe for tests and benchmarks: the official ``stripe`` SDK talks to it unchanged.

Point ``StripeClient`` at it through its base addresses::

    import stripe
    from meterline.stripe_standin import StandinConfig, start

    with start(StandinConfig(customers=("cus_acme",), meters=("llm_input_tokens",))) as fake:
        client = stripe.StripeClient(fake.api_key, base_addresses=fake.base_addresses)
        client.v1.billing.meter_events.create(
            {"event_name": "llm_input_tokens", "identifier": "w1",
             "payload": {"stripe_customer_id": "cus_acme", "value": "1200"}}
        )
        fake.state.totals()   # {("cus_acme", "llm_input_tokens"): 1200}
        fake.state.faults.inject("drop_after", path="/v1/billing/meter_events")
        fake.state.clock.advance(25 * 3600)

Outside Python: ``meterline stripe-standin --port 12111`` and
``METERLINE_STRIPE_API_BASE`` / ``METERLINE_STRIPE_METER_EVENTS_BASE`` at it;
``GET /_standin/state``, ``POST /_standin/clock`` (``{"advance": s}`` or ``{"now": t}``),
``POST /_standin/faults`` (``{"kind": "rate_limit", "times": 3, "path": "/v1/…"}``).

It checks requests the way Stripe documents them (details in ``app``, ``billing``,
``invoicing``, ``_faults``): the secret key (401 with Stripe's error object); form-encoded
v1 bodies and JSON v2 bodies; required parameters, unknown parameters, formats and
limits of meter events (``payload[value]`` a whole-number string, ``identifier`` ≤ 100
characters, ``timestamp`` at most 35 days old and 5 minutes ahead of its clock);
idempotency-key replay and misuse; identifier de-duplication for 24 h of its clock; one
concurrent call per customer and meter; v2 meter event sessions (15 minutes) and streams
(≤ 100 events, validated asynchronously); cancellations within 24 h; meters; customers,
invoice items and draft/finalised invoices; meter event summaries. Faults on demand:
429 (``rate_limit``, ``lock_timeout``), 500 before or after applying, connections dropped
before or after applying, answers held back (``stall_before`` / ``stall_after``, to kill a client
mid-request). Its clock is settable (``Clock``).

Not covered (do not test these against it): Stripe's real rate limits (only injected or
per-customer-meter overlaps answer 429); the eventual consistency of meter event
summaries (they are current at once here); meter updates and
deactivation; ``/v2/billing/meter_events`` and ``/v2/billing/meter_event_adjustments``;
payload key overrides beyond one customer and one value key per meter; dimensions;
``event_time_window`` aggregation; Connect (``Stripe-Account``), test clocks, webhooks and
the error-report events (reports are kept in ``Standin.error_reports`` instead); prices,
products, subscriptions, billing credits, tax, discounts, payments and invoice
collection (finalising only numbers the invoice); ``unit_amount_decimal``; list
``expand``. Error messages follow Stripe's where known and are paraphrased elsewhere;
the type, status and ``param`` are what tests should rely on. Two behaviours Stripe does
not document precisely are settings: a repeated identifier on v1
(``duplicate_identifier``: ``error``, 400 ``resource_already_exists``, or ``ignore``) and
the overlap answer (429 ``rate_limit`` without ``Stripe-Should-Retry``). Everything is in
memory, for one account; a restart forgets it.
"""

from __future__ import annotations

from meterline.stripe_standin._clock import Clock
from meterline.stripe_standin._faults import KINDS as FAULT_KINDS
from meterline.stripe_standin._faults import Fault
from meterline.stripe_standin._state import (
    Adjustment,
    ErrorReport,
    MeterEvent,
    Standin,
    StandinConfig,
)
from meterline.stripe_standin.app import create_app
from meterline.stripe_standin.server import StandinServer, serve, start

__all__ = [
    "FAULT_KINDS",
    "Adjustment",
    "Clock",
    "ErrorReport",
    "Fault",
    "MeterEvent",
    "Standin",
    "StandinConfig",
    "StandinServer",
    "create_app",
    "serve",
    "start",
]
