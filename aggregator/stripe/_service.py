"""What the CLI, the API and ``meterline serve`` call: sync, status, reconcile, setup, loop.

``reconcile`` compares, per consumer and meter, what meterline bills for a month (its
invoices; the rated windows where an invoice cannot say it — a ``features`` filter,
``unpriced: send``) with what the ledger says Stripe accepted for the windows of that
month. Token meters must match exactly; a cost meter within ``n × unit / 2`` (each of
its ``n`` windows rounded half-up) plus the invoice's own rounding
(:func:`invoice_rounding`: half a minor unit per line, through the markup, and half for
the markup).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

from meterline.aggregator.pricing import MONEY_CONTEXT
from meterline.aggregator.stripe._client import (
    MeterEventsClient,
    Retrying,
    StripeAuthError,
    StripeEnv,
)
from meterline.aggregator.stripe._config import MeterConfig, StripeConfig
from meterline.aggregator.stripe._ledger import ACCEPTED, PENDING, REPORTED, SENT_UNKNOWN, Ledger
from meterline.aggregator.stripe._mapping import (
    consumer_known,
    customers_in_use,
    load_customer_map,
    set_customer,
    validate_assignment,
)
from meterline.aggregator.stripe._plan import plan
from meterline.aggregator.stripe._sync import LOOKBACK, SyncSummary, rate_stale, run_sync
from meterline.aggregator.stripe._windows import closed_until, floor_window, window_values
from meterline.store import Store

logger = logging.getLogger(__name__)

__all__ = [
    "ReconcileRow",
    "SyncLoop",
    "assign_customer",
    "invoice_rounding",
    "reconcile",
    "reconcile_report",
    "setup",
    "setup_meters",
    "status",
    "sync",
]


def sync(
    store: Store,
    config: StripeConfig,
    *,
    pricing: Any = None,
    api: str = "auto",
    dry_run: bool = False,
    env: StripeEnv | None = None,
    client: MeterEventsClient | None = None,
) -> SyncSummary:
    """One sync run with a client built from the environment (none for a dry run)."""
    if client is None and not dry_run:
        client = MeterEventsClient(env or StripeEnv.from_environ())
    return run_sync(store, config, pricing=pricing, client=client, api=api, dry_run=dry_run)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def status(
    store: Store, config: StripeConfig, *, pricing: Any = None, now: datetime | None = None
) -> dict[str, Any]:
    """Last run, what is pending (closed windows not in Stripe yet), held, reported, lag.

    With ``pricing``, stale months are rated first (else the table is read as it is)."""
    now = now or datetime.now(UTC)
    rate_stale(store, pricing, now)
    _, runs = store.query(
        "SELECT StartedAt, FinishedAt, Summary FROM {db}.stripe_runs WHERE DryRun = 0 "
        "ORDER BY StartedAt DESC LIMIT 1"
    )
    last = None
    if runs:
        summary = json.loads(runs[0][2])
        summary.pop("would_send", None)
        last = summary
    end = closed_until(now, config)
    start = floor_window(now - LOOKBACK, config.window)
    slots = Ledger(store).slots(start, end)
    p = plan(
        window_values(store, config, start=start, end=end),
        slots,
        load_customer_map(store, config),
        now=now,
        window_seconds=int(config.window_length.total_seconds()),
    )
    pending = [
        {"consumer": r.consumer, "meter": r.event_name, "window": _iso(r.window_start),
         "kind": r.kind, "value": r.value, "resend": sp.resend}
        for sp in p.sends for r in sp.rows
    ]  # fmt: skip
    oldest = min((sp.slot[2] for sp in p.sends), default=None)
    lag = (now - (oldest + config.window_length + config.grace)).total_seconds() if oldest else 0
    rows = [r for rs in slots.values() for r in rs]
    reported = [
        {"consumer": r.consumer, "meter": r.event_name, "window": _iso(r.window_start),
         "kind": r.kind, "value": r.value, "reason": r.answer}
        for r in rows if r.state == REPORTED
    ]  # fmt: skip
    reported += [{**i, "reason": "no Stripe customer"} for i in p.no_customer]
    reported += [{**i, "reason": "blocked: settle by hand"} for i in p.blocked]
    return {
        "last_run": last,
        "closed_until": _iso(end),
        "pending_events": len(pending),
        "pending": pending[:200],
        "unresolved": sum(r.state in (PENDING, SENT_UNKNOWN) for r in rows),
        "held": p.held,
        "reported": reported,
        "lag_seconds": max(0.0, lag),
    }


def _plain(value: Decimal) -> str:
    """A Decimal without trailing zeros or an exponent (``0.0825``, ``0``, ``22500``)."""
    return format(value.normalize(), "f") if value else "0"


@dataclass(frozen=True)
class ReconcileRow:
    consumer: str
    customer: str | None
    meter: str
    expected: Decimal
    """Tokens, or money (cost meters), meterline bills for the month."""
    accepted: Decimal
    """What Stripe accepted by the ledger (cost meters: × unit)."""
    reported: Decimal
    """Credits and expired windows reported for a person (cost meters: × unit)."""
    tolerance: Decimal
    source: str
    """``invoice`` or ``windows``: where ``expected`` comes from."""
    in_stripe: Decimal | None = None
    """What Stripe's meter holds by its event summaries (cost meters: × unit); ``None``:
    not asked (``check_stripe`` off, or no customer to ask about)."""

    @property
    def difference(self) -> Decimal:
        return self.expected - self.accepted

    @property
    def billed(self) -> bool:
        """Billed through Stripe: the consumer has a customer, or Stripe holds some of its
        usage of the month (a customer removed after a send)."""
        return self.customer is not None or self.accepted != 0

    @property
    def ok(self) -> bool:
        """Invoices and ledger agree, and Stripe's meter holds what the ledger says it
        accepted (when asked)."""
        in_meter = self.in_stripe is None or self.in_stripe == self.accepted
        return abs(self.difference) <= self.tolerance and in_meter

    def to_dict(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "customer": self.customer,
            "meter": self.meter,
            "expected": _plain(self.expected),
            "accepted": _plain(self.accepted),
            "reported": _plain(self.reported),
            "difference": _plain(self.difference),
            "tolerance": _plain(self.tolerance),
            "source": self.source,
            "in_stripe": None if self.in_stripe is None else _plain(self.in_stripe),
            "billed": self.billed,
            "ok": self.ok,
        }


def reconcile_report(
    store: Store,
    pricing: Any,
    config: StripeConfig,
    period: str,
    *,
    now: datetime | None = None,
    check_stripe: bool = False,
    env: StripeEnv | None = None,
    client: MeterEventsClient | None = None,
) -> dict[str, Any]:
    """:func:`reconcile` as ``meterline stripe reconcile`` and the API answer it.

    ``rows`` are the consumers billed through Stripe; ``not_billed`` those without a
    customer (deliberately or not yet mapped) and nothing accepted — listed, never in
    ``ok``, so a consumer left out of Stripe on purpose does not fail every reconcile.
    With ``check_stripe`` each billed row also gets ``in_stripe``, what Stripe's meter
    holds by its event summaries: a row whose events the ledger counts as accepted but
    Stripe dropped (an unknown customer, an inactive meter) then fails.

    Raises:
        StripeRequestError: ``check_stripe`` and Stripe could not be read.
    """
    rows = reconcile(store, pricing, config, period, now=now)
    if check_stripe:
        rows = _with_stripe(rows, config, period, now, client or MeterEventsClient(
            env or StripeEnv.from_environ()))  # fmt: skip
    billed = [r.to_dict() for r in rows if r.billed]
    return {
        "period": period,
        "rows": billed,
        "not_billed": [r.to_dict() for r in rows if not r.billed],
        "ok": all(r["ok"] for r in billed),
    }


def _from_invoice(meter: MeterConfig, invoice: Any, config: StripeConfig) -> Decimal | None:
    """The meter's figure from an invoice, or ``None`` when the invoice cannot say it."""
    if meter.features is not None or (config.unpriced == "send" and meter.value == "tokens"):
        return None
    if meter.value == "cost":
        if meter.providers or meter.models or meter.token_types:
            return None
        return Decimal(invoice.total)
    return Decimal(
        sum(
            line.quantity
            for line in invoice.lines
            if meter.counts(
                token_type=line.token_type, provider=line.provider, model=line.model, feature=""
            )
        )
    )


def invoice_rounding(invoice: Any, pricing: Any) -> Decimal:
    """How far an invoice's total may be from its exact money: each line is rounded to
    the minor unit (half of one each way), the markup is taken of the rounded subtotal
    and rounded itself."""
    half = Decimal(1).scaleb(-pricing.config.minor_units) / 2
    percent = pricing.config.plan_for(invoice.consumer).markup_percent
    return len(invoice.lines) * half * (1 + percent / 100) + half


def _with_stripe(
    rows: list[ReconcileRow],
    config: StripeConfig,
    period: str,
    now: datetime | None,
    client: MeterEventsClient,
) -> list[ReconcileRow]:
    from dataclasses import replace

    from meterline.aggregator.invoices import month

    p = month(period)
    end = max(p.start, min(p.end, closed_until(now or datetime.now(UTC), config)))
    ids = client.meter_ids()
    units = {m.event_name: m.unit for m in config.meters}
    out = []
    for r in rows:
        if r.customer is None or not r.billed:
            out.append(r)
            continue
        held = 0
        if r.meter in ids and end > p.start:
            held = client.meter_total(ids[r.meter], r.customer, p.start, end)
        unit = units.get(r.meter)
        out.append(replace(r, in_stripe=Decimal(held) * unit if unit else Decimal(held)))
    return out


def reconcile(
    store: Store, pricing: Any, config: StripeConfig, period: str, *, now: datetime | None = None
) -> list[ReconcileRow]:
    """Per consumer and meter: the month's invoices against the ledger's accepted values
    (a month not over yet: its closed windows so far)."""
    from meterline.aggregator.invoices import between, get_invoices, month

    p = month(period)
    end = min(p.end, closed_until(now or datetime.now(UTC), config))
    if end < p.end:  # the month is still open: what is closed of it so far
        p = between(p.start, max(end, p.start))
    from meterline.aggregator.tenancy import Scope

    views = get_invoices(store, pricing, p, scope=Scope.ALL)
    invoices = {c: v.invoice for c, v in views.items()}
    values = window_values(store, config, start=p.start, end=p.end)
    slots = Ledger(store).slots(p.start, p.end)
    customers = load_customer_map(store, config)
    consumers = sorted(set(invoices) | {v.consumer for v in values} | {s[0] for s in slots})
    out: list[ReconcileRow] = []
    with localcontext(MONEY_CONTEXT):
        for consumer in consumers:
            for meter in config.meters:
                mine = [
                    v for v in values if v.consumer == consumer and v.event_name == meter.event_name
                ]
                rows = [r for (c, m, _), rs in slots.items() if c == consumer
                        and m == meter.event_name for r in rs]  # fmt: skip
                accepted = Decimal(sum(r.value for r in rows if r.state == ACCEPTED))
                reported = Decimal(sum(r.value for r in rows if r.state == REPORTED
                                       and r.kind in ("credit", "expired")))  # fmt: skip
                invoice = invoices.get(consumer)
                expected = _from_invoice(meter, invoice, config) if invoice else None
                source = "invoice"
                if expected is None:
                    source = "windows"
                    expected = sum(
                        (v.money if meter.value == "cost" else Decimal(v.value) for v in mine),
                        Decimal(0),
                    )
                tolerance = Decimal(0)
                if meter.value == "cost":
                    assert meter.unit is not None
                    accepted *= meter.unit
                    reported *= meter.unit
                    windows = len({r.window_start for r in rows} | {v.start for v in mine})
                    tolerance = windows * meter.unit / 2
                    if source == "invoice":
                        tolerance += invoice_rounding(invoice, pricing)
                if not expected and not accepted and not reported:
                    continue
                out.append(ReconcileRow(consumer, customers.customer_for(consumer),
                                        meter.event_name, expected, accepted, reported,
                                        tolerance, source))  # fmt: skip
    return out


def setup_meters(
    config: StripeConfig, *, env: StripeEnv | None = None, client: MeterEventsClient | None = None
) -> list[dict[str, str]]:
    """Create the configured meters Stripe lacks (by event name); lists what it did."""
    client = client or MeterEventsClient(env or StripeEnv.from_environ())
    existing = client.meter_names()
    done = []
    for meter in config.meters:
        if meter.event_name in existing:
            done.append({"event_name": meter.event_name, "action": "exists"})
            continue
        unit = "tokens" if meter.value == "tokens" else f"units of {meter.unit}"
        answer = client.create_meter(meter.event_name, f"meterline {meter.event_name} ({unit})")
        done.append(
            {
                "event_name": meter.event_name,
                "action": "created"
                if answer.outcome == "accepted"
                else f"failed: {answer.detail[:200]}",
            }
        )
    return done


def _customer_status(client: MeterEventsClient, customer: str) -> str:
    exists = client.customer_exists(customer)
    if exists is None:
        return "not checked: Stripe gave no answer"
    return "found" if exists else "missing"


def setup(
    store: Store,
    config: StripeConfig,
    *,
    env: StripeEnv | None = None,
    client: MeterEventsClient | None = None,
) -> dict[str, Any]:
    """``meterline stripe setup``: create the meters Stripe lacks, then check that Stripe
    has every customer the mapping names (file and API). ``ok`` is false when a meter could
    not be created or a customer is missing or could not be checked."""
    client = client or MeterEventsClient(env or StripeEnv.from_environ())
    meters = setup_meters(config, client=client)
    customers = [
        {"customer": customer, "consumers": ", ".join(consumers),
         "status": _customer_status(client, customer)}
        for customer, consumers in customers_in_use(load_customer_map(store, config)).items()
    ]  # fmt: skip
    failed = [m["event_name"] for m in meters if m["action"] != "created"
              and m["action"] != "exists"]  # fmt: skip
    missing = [c["customer"] for c in customers if c["status"] == "missing"]
    unchecked = [c["customer"] for c in customers if c["status"].startswith("not checked")]
    problems = []
    if failed:
        problems.append(f"meters not created: {', '.join(failed)}")
    if missing:
        problems.append(
            f"Stripe has no customer {', '.join(missing)}: their usage is not sent; fix "
            "stripe.customers or PUT /v1/consumers/{consumer}"
        )
    if unchecked:
        problems.append(f"customers not checked (no answer): {', '.join(unchecked)}")
    return {
        "meters": meters,
        "customers": customers,
        "ok": not problems,
        "error": "stripe setup incomplete: " + "; ".join(problems) if problems else None,
    }


class CustomerMissingError(ValueError):
    """Stripe says the customer does not exist (the assignment is refused)."""


CHECK_RETRYING = Retrying(attempts=2, base=0.25, cap=1.0)
"""A request's check of a customer waits this little for Stripe (then: not checked)."""


def assign_customer(
    store: Store,
    config: StripeConfig | None,
    consumer: str,
    customer_id: str | None,
    *,
    env: StripeEnv | None = None,
) -> dict[str, Any]:
    """``PUT /v1/consumers/{consumer}``: check, store, and answer the assignment.

    The id is checked in Stripe first when the server has ``STRIPE_API_KEY``: a customer
    Stripe does not have is refused (its usage would be dropped by Stripe). When it cannot
    be checked (no key, no answer) the assignment is stored with a warning — the sync checks
    again before it sends. A consumer with no usage and no key yet is accepted with a
    warning (mapping before the first call is normal; a typo is not).

    Raises:
        ValueError: a malformed id (:func:`set_customer`); :class:`CustomerMissingError`.
    """
    warnings: list[str] = []
    if customer_id is not None:
        validate_assignment(consumer, customer_id)  # a malformed id is not sent to Stripe
        env = env or StripeEnv.from_environ()
        if not env.api_key:
            warnings.append(
                f"{customer_id} not checked in Stripe: STRIPE_API_KEY is not set on the "
                "server (the sync checks it before sending)"
            )
        else:
            try:
                client = MeterEventsClient(env, retrying=CHECK_RETRYING, timeout=10.0)
                exists = client.customer_exists(customer_id)
            except StripeAuthError as exc:
                exists = None
                warnings.append(f"{customer_id} not checked in Stripe: {exc}")
            if exists is False:
                raise CustomerMissingError(
                    f"Stripe has no customer {customer_id} (or it was deleted): create it in "
                    "Stripe or correct the id"
                )
            if exists is None and not warnings:
                warnings.append(
                    f"{customer_id} not checked in Stripe (no answer): the sync checks it "
                    "before sending"
                )
    if not consumer_known(store, consumer):
        warnings.append(
            f"consumer {consumer!r} has no usage and no API key yet: assigned anyway (it "
            "applies from its first call); check the spelling"
        )
    set_customer(store, consumer, customer_id)
    mapping = load_customer_map(store, config)
    return {
        "consumer": consumer,
        "stripe_customer_id": mapping.customer_for(consumer),
        "source": mapping.source(consumer),
        "warnings": warnings,
    }


class SyncLoop:
    """``stripe.sync_interval`` inside ``meterline serve``: a daemon thread, stopped cleanly.

    The first run starts at once (a restart resumes what a killed run left), then one run
    every interval after the previous one ended. A failed run is logged (once per distinct
    error) and retried at the next interval. :meth:`stop` waits for the run in progress up
    to a bound: abandoning a run is safe (its rows stay pending or unknown in the ledger
    and the next run settles them first), but finishing it writes its answers.
    """

    def __init__(
        self,
        store: Store,
        config: StripeConfig,
        pricing: Any,
        *,
        env: StripeEnv | None = None,
        current: Callable[[], StripeConfig | None] | None = None,
    ) -> None:
        """Args:
        config: the section at start (its ``sync_interval`` sets the interval).
        pricing: the pricing in force, or a callable returning it.
        current: the section in force now (a reloaded configuration file); ``None``
            from it skips the run.
        """
        assert config.sync_interval is not None
        self.store = store
        self.config = config
        self.pricing = pricing
        self.current = current
        self.env = env or StripeEnv.from_environ()
        self.interval = config.sync_interval.total_seconds()
        self.last: SyncSummary | None = None
        self.last_error: str | None = None
        self.runs = 0
        """Runs finished (successful or not)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="meterline-stripe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop after the run in progress; ``False`` if it is still running at ``timeout``."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        client: MeterEventsClient | None = None
        while not self._stop.is_set():
            try:
                config = self.current() if self.current is not None else self.config
                if config is not None and config.meters:
                    client = client or MeterEventsClient(self.env, stop=self._stop)
                    pricing = self.pricing() if callable(self.pricing) else self.pricing
                    self.last = run_sync(self.store, config, pricing=pricing, client=client)
                    if not self.last.ok:
                        logger.warning("%s (the next run retries)", self.last.problem())
                self.last_error = None
            except Exception as exc:  # keep the loop: the next interval retries
                if str(exc) != self.last_error:
                    logger.warning("stripe sync failed (retried every interval): %s", exc)
                self.last_error = str(exc)
            self.runs += 1
            self._stop.wait(self.interval)
