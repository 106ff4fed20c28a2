"""The stand-in's memory: configuration, Stripe objects, idempotency results, sessions.

All of it sits behind one lock so tests can read it from their own thread while the
server's event loop writes it. Nothing is persisted: a restart forgets everything.
"""

from __future__ import annotations

import secrets
import string
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meterline.stripe_standin._clock import Clock
from meterline.stripe_standin._faults import Faults

DAY = 24 * 3600
_ALNUM = string.ascii_letters + string.digits


def new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(n))


@dataclass(frozen=True)
class StandinConfig:
    """How the stand-in behaves; every field has Stripe's value as its default."""

    api_keys: tuple[str, ...] = ("sk_test_standin",)
    """Secret keys that authenticate (``sk_live_…`` keys answer with ``livemode: true``)."""
    customers: tuple[str, ...] = ()
    """Customer ids that exist from the start (more through ``POST /v1/customers``)."""
    meters: tuple[str, ...] = ()
    """Event names of sum meters that exist from the start."""
    max_past: float = 35 * DAY
    """Oldest accepted meter event ``timestamp``, seconds before now."""
    max_future: float = 5 * 60
    """Latest accepted meter event ``timestamp``, seconds after now."""
    dedup_window: float = DAY
    """How long an ``identifier`` is remembered (Stripe: "at least 24 hours")."""
    adjustment_window: float = DAY
    """How long after Stripe received an event it can still be cancelled."""
    idempotency_ttl: float = DAY
    """How long an idempotency key's saved answer is kept (Stripe: at least 24 hours)."""
    session_ttl: float = 15 * 60
    """Lifetime of a v2 meter event session token."""
    stream_max_events: int = 100
    """Most events in one ``POST /v2/billing/meter_event_stream``."""
    meter_event_latency: float = 0.0
    """Seconds a v1 meter event holds its customer+meter slot (makes overlaps observable)."""
    duplicate_identifier: str = "error"
    """v1 answer to a repeated identifier inside the window: ``error`` (400
    ``resource_already_exists``) or ``ignore`` (200, nothing counted)."""


@dataclass
class MeterEvent:
    identifier: str
    event_name: str
    payload: dict[str, str]
    timestamp: int
    created: float
    api: str
    """``v1`` or ``v2`` (stream)."""
    canceled: bool = False

    def v1(self, livemode: bool) -> dict[str, Any]:
        return {
            "object": "billing.meter_event",
            "created": int(self.created),
            "event_name": self.event_name,
            "identifier": self.identifier,
            "livemode": livemode,
            "payload": dict(self.payload),
            "timestamp": self.timestamp,
        }


@dataclass
class ErrorReport:
    """An event Stripe accepted over the wire but rejected while processing it."""

    code: str
    message: str
    event: dict[str, Any]
    api: str
    created: float


@dataclass
class Adjustment:
    id: str
    event_name: str
    identifier: str
    created: float

    def api(self, livemode: bool) -> dict[str, Any]:
        return {
            "object": "billing.meter_event_adjustment",
            "cancel": {"identifier": self.identifier},
            "event_name": self.event_name,
            "livemode": livemode,
            "status": "complete",
            "type": "cancel",
        }


@dataclass
class Saved:
    """An idempotency key's record: the request's fingerprint and, once done, its answer."""

    fingerprint: tuple[Any, ...]
    request_id: str
    created: float
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Session:
    id: str
    token: str
    created: float
    expires_at: float


class Standin:
    """Everything the stand-in knows. Read it from tests through :class:`StandinServer`."""

    def __init__(self, config: StandinConfig | None = None, *, clock: Clock | None = None):
        self.config = config or StandinConfig()
        self.clock = clock or Clock()
        self.faults = Faults()
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget every object, answer, session and fault (configuration stays)."""
        with self.lock:
            self.customers: dict[str, dict[str, Any]] = {}
            self.meters: dict[str, dict[str, Any]] = {}
            self.meter_events: list[MeterEvent] = []
            self.by_identifier: dict[str, MeterEvent] = {}
            self.error_reports: list[ErrorReport] = []
            self.duplicates: list[dict[str, Any]] = []
            self.adjustments: list[Adjustment] = []
            self.invoice_items: dict[str, dict[str, Any]] = {}
            self.invoices: dict[str, dict[str, Any]] = {}
            self.idempotency: dict[tuple[bool, str], Saved] = {}
            self.sessions: dict[str, Session] = {}
            self.in_flight: set[tuple[str, str]] = set()
            self.requests: list[tuple[str, str, int]] = []
            self.faults.clear()
            for customer in self.config.customers:
                self.add_customer(customer)
            for event_name in self.config.meters:
                self.add_meter(event_name)

    # -- objects a test sets up directly -------------------------------------------------

    def add_customer(self, customer_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """Create a customer (``id`` random when not given); returns Stripe's object."""
        now = self.clock.now()
        customer = {
            "id": customer_id or new_id("cus_", 14),
            "object": "customer",
            "balance": 0,
            "created": int(now),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "email": None,
            "invoice_prefix": new_id("", 8).upper(),
            "livemode": False,
            "metadata": {},
            "name": None,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "tax_exempt": "none",
            "test_clock": None,
        }
        customer.update(fields)
        with self.lock:
            self.customers[customer["id"]] = customer
        return customer

    def add_meter(
        self,
        event_name: str,
        *,
        display_name: str | None = None,
        formula: str = "sum",
        customer_key: str = "stripe_customer_id",
        value_key: str = "value",
        event_time_window: str | None = None,
    ) -> dict[str, Any]:
        """Create an active meter for ``event_name``; returns Stripe's object."""
        now = int(self.clock.now())
        meter = {
            "id": new_id("mtr_test_", 24),
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {"event_payload_key": customer_key, "type": "by_id"},
            "default_aggregation": {"formula": formula},
            "display_name": display_name or event_name,
            "event_name": event_name,
            "event_time_window": event_time_window,
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {"event_payload_key": value_key},
        }
        with self.lock:
            self.meters[meter["id"]] = meter
        return meter

    def active_meter(self, event_name: str) -> dict[str, Any] | None:
        with self.lock:
            for meter in self.meters.values():
                if meter["event_name"] == event_name and meter["status"] == "active":
                    return meter
        return None

    # -- what tests read --------------------------------------------------------------

    def totals(self) -> dict[tuple[str, str], int]:
        """(customer id, event name) → the meter's aggregate over accepted, non-cancelled
        events (``sum``, ``count`` or ``last`` by the meter's formula)."""
        out: dict[tuple[str, str], int] = {}
        with self.lock:
            events = sorted(
                (e for e in self.meter_events if not e.canceled),
                key=lambda e: (e.timestamp, e.created),
            )
            for event in events:
                meter = self.active_meter(event.event_name)
                if meter is None:
                    continue
                customer = event.payload[meter["customer_mapping"]["event_payload_key"]]
                value = int(event.payload[meter["value_settings"]["event_payload_key"]])
                key = (customer, event.event_name)
                formula = meter["default_aggregation"]["formula"]
                if formula == "count":
                    out[key] = out.get(key, 0) + 1
                elif formula == "last":
                    out[key] = value
                else:
                    out[key] = out.get(key, 0) + value
        return out

    def seen(self, identifier: str, now: float) -> bool:
        """Whether ``identifier`` was received within the de-duplication window."""
        with self.lock:
            event = self.by_identifier.get(identifier)
            return event is not None and event.created >= now - self.config.dedup_window

    def events(self, *, include_canceled: bool = True) -> list[MeterEvent]:
        with self.lock:
            return [e for e in self.meter_events if include_canceled or not e.canceled]

    def prune(self) -> None:
        """Forget identifiers and idempotency keys older than their windows."""
        now = self.clock.now()
        with self.lock:
            # Both dicts are in arrival order: drop from the oldest end (O(1) per request).
            cutoff = now - self.config.dedup_window
            while self.by_identifier:
                oldest = next(iter(self.by_identifier))
                if self.by_identifier[oldest].created >= cutoff:
                    break
                del self.by_identifier[oldest]
            cutoff = now - self.config.idempotency_ttl
            while self.idempotency:
                oldest_key = next(iter(self.idempotency))
                if self.idempotency[oldest_key].created >= cutoff:
                    break
                del self.idempotency[oldest_key]

    def snapshot(self) -> dict[str, Any]:
        """All state as JSON-ready data (``GET /_standin/state``)."""
        with self.lock:
            return {
                "now": self.clock.now(),
                "totals": [
                    {"customer": c, "event_name": n, "value": v}
                    for (c, n), v in sorted(self.totals().items())
                ],
                "meter_events": [
                    {**e.v1(False), "api": e.api, "canceled": e.canceled, "received": e.created}
                    for e in self.meter_events
                ],
                "error_reports": [r.__dict__ for r in self.error_reports],
                "duplicates": list(self.duplicates),
                "adjustments": [a.api(False) | {"created": a.created} for a in self.adjustments],
                "meters": list(self.meters.values()),
                "customers": list(self.customers.values()),
                "invoice_items": list(self.invoice_items.values()),
                "invoices": list(self.invoices.values()),
                "requests": [list(r) for r in self.requests],
                "faults_pending": [f.__dict__ for f in self.faults.pending()],
            }


def list_object(
    items: Iterable[dict[str, Any]], params: dict[str, Any], url: str, *, created: str = "created"
) -> dict[str, Any]:
    """Stripe's list envelope with ``limit`` / ``starting_after`` / ``ending_before``
    over ``items`` (newest first, as Stripe lists)."""
    from meterline.stripe_standin._errors import invalid_request

    data = sorted(items, key=lambda o: (o.get(created, 0), o["id"]), reverse=True)
    try:
        limit = int(params.get("limit", 10))
    except (TypeError, ValueError):
        raise invalid_request(f"Invalid integer: {params.get('limit')}", param="limit") from None
    if not 1 <= limit <= 100:
        raise invalid_request(
            "This value must be greater than or equal to 1 and less than or equal to 100.",
            param="limit",
        )
    ids = [o["id"] for o in data]
    for cursor in ("starting_after", "ending_before"):
        if cursor in params and params[cursor] not in ids:
            raise invalid_request(
                f"No such object: '{params[cursor]}'", param=cursor, code="resource_missing"
            )
    if "starting_after" in params:
        data = data[ids.index(params["starting_after"]) + 1 :]
    elif "ending_before" in params:
        data = data[: ids.index(params["ending_before"])][-limit:]
    return {
        "object": "list",
        "data": data[:limit],
        "has_more": len(data) > limit,
        "url": url,
    }
