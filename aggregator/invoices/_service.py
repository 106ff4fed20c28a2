"""Invoices over the store: compute, finalise, re-price, export.

Contract:
- An *open* period's invoices are computed from the counted usage (each response once,
  :func:`~meterline.aggregator.queries.usage.counted_usage`) with the prices in force
  at each call's timestamp; invalid usage is listed in ``invalid``, never priced.
- Every read takes a :class:`~meterline.aggregator.tenancy.Scope` (no default): whose
  invoices it may see. Finalisation and re-pricing are the admin's and read them all.
- A *finalised* period's invoices are the stored documents (latest revision); a later
  price change never alters them silently. :func:`reprice` computes them afresh, shows
  the difference and records it as an adjustment (``force``: issues a new revision).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from meterline.aggregator.invoices._build import build_invoices
from meterline.aggregator.invoices._claims import period_claim
from meterline.aggregator.invoices._errors import InvoiceError, PeriodOpenError
from meterline.aggregator.invoices._model import InvalidUsage, Invoice
from meterline.aggregator.invoices._period import Period, month
from meterline.aggregator.pricing import (
    MINOR_UNITS,
    MONEY_CONTEXT,
    Pricing,
    RatedGroup,
    Rater,
    RatingGrid,
    UsageGroup,
    round_money,
)
from meterline.aggregator.queries import READ_SETTINGS
from meterline.aggregator.queries import invoices as sql
from meterline.aggregator.queries.rating import rating_sql
from meterline.aggregator.queries.usage import UsageFilter
from meterline.aggregator.tenancy import Scope
from meterline.store import Store

logger = logging.getLogger(__name__)


def _rating_rows(
    store: Store,
    pricing: Pricing,
    f: UsageFilter,
    extra_keys: tuple[str, ...] = (),
    hours: list[datetime] | None = None,
) -> tuple[RatingGrid, list[str], list[tuple[Any, ...]]]:
    """Run the rating query with a grid that covers every model in the result.

    The grid starts from the models the book has rated before (no pre-query); when the
    result holds a model whose prices need splits the grid lacks, the query runs again
    with them (at most once more).
    """
    book = pricing.book
    for _ in range(2):
        known = book.seen
        grid = book.grid(known)
        query, params = rating_sql(f, grid, extra_keys=extra_keys, hours=hours)
        names, rows = store.query(query, params, settings=READ_SETTINGS)
        present = {(str(r[1]), str(r[2]), str(r[3])) for r in rows}
        if present <= known:
            return grid, names, rows
        book.remember(present)
        if grid.covers(book.grid(present), f.start, f.end):
            return grid, names, rows
    return grid, names, rows


def rate_usage(
    store: Store,
    pricing: Pricing,
    f: UsageFilter,
    *,
    extra_keys: tuple[str, ...] = (),
    hours: list[datetime] | None = None,
) -> tuple[RatingGrid, list[RatedGroup]]:
    """Rate the usage selected by ``f``, grouped by the rating keys (+ ``extra_keys``);
    ``hours``: only the usage of these UTC hours."""
    grid, names, rows = _rating_rows(store, pricing, f, extra_keys, hours)
    rater = Rater(pricing.book, grid)
    rated: list[RatedGroup] = []
    for row in rows:
        record = dict(zip(names, row, strict=True))
        if record["invalid"]:
            continue  # never priced; counted by the usage query's invalid_requests
        extra = tuple(record[f"k_{k}"] for k in extra_keys)
        rated.append(rater.rate(UsageGroup.from_row(record, extra)))
    return grid, rated


def compute_invoices(
    store: Store,
    pricing: Pricing,
    period: Period,
    *,
    scope: Scope,
    consumer: str | None = None,
    feature: str | None = None,
) -> dict[str, Invoice]:
    """Invoices computed from usage (ignores finalisation) of the consumers ``scope``
    admits; a requested consumer without usage gets an empty invoice. ``feature``: only
    that feature's calls (a budget's share of the invoice).

    A period of whole UTC hours (every month; or one whose partial edge hours hold no
    usage, such as a budget's ``total``) is read from ``rated_usage`` when its months are
    current; any other range, or one with months the rating loop has not caught up with
    yet, is rated on the fly (:func:`rate_invoices_on_the_fly`) — the same figures
    either way, never stale. With ``feature``, only that feature's calls (the hourly
    rows, which keep the feature).

    Raises:
        NotVisible: ``consumer`` is outside ``scope``.
    """
    from meterline.aggregator.rated import invoices_from_table, stale_months, table_range

    if consumer is not None:
        scope.check(consumer)
    hours = None
    if not stale_months(store, pricing, period.start, period.end):
        hours = table_range(store, period.start, period.end)
    if hours is not None:
        return invoices_from_table(
            store,
            pricing,
            start=hours[0],
            end=hours[1],
            label=period.label,
            scope=scope,
            consumer=consumer,
            feature=feature,
        )
    return rate_invoices_on_the_fly(
        store, pricing, period, scope=scope, consumer=consumer, feature=feature
    )


def rate_invoices_on_the_fly(
    store: Store,
    pricing: Pricing,
    period: Period,
    *,
    scope: Scope,
    consumer: str | None = None,
    feature: str | None = None,
) -> dict[str, Invoice]:
    """Invoices rated from the counted usage now, in Python (the reference the rated
    table is tested against).

    Raises:
        NotVisible: ``consumer`` is outside ``scope``.
    """
    if consumer is not None:
        scope.check(consumer)
    f = UsageFilter(
        start=period.start, end=period.end, consumer=consumer, feature=feature, scope=scope
    )
    grid, _, rows = _rating_rows(store, pricing, f)
    valid, invalid = [], {}
    for row in rows:
        if row[-1]:  # the rating query's last column: the usage's UsageError
            key = (str(row[0]), str(row[1]), str(row[2] or row[3]), str(row[-1]))
            invalid[key] = invalid.get(key, 0) + int(row[8])
        else:
            valid.append(row)
    invoices = build_invoices(
        valid,
        Rater(pricing.book, grid),
        pricing.config,
        period=period.label,
        consumers=(
            *((consumer,) if consumer is not None else ()),
            *sorted({k[0] for k in invalid}),
        ),
    )
    for (c, provider, model, reason), requests in sorted(invalid.items()):
        inv = invoices[c]
        invoices[c] = replace(
            inv, invalid=(*inv.invalid, InvalidUsage(provider, model, reason, requests))
        )
    return invoices


@dataclass(frozen=True)
class Finalization:
    """A finalised period."""

    period: str
    revision: int
    """Increases with every forced re-issue."""
    finalized_at: datetime
    currency: str
    catalogue_source: str


@dataclass(frozen=True)
class InvoiceView:
    """An invoice and whether it is final."""

    invoice: Invoice
    finalization: Finalization | None = None
    """``None``: the period is open and the invoice computed now."""
    revision: int | None = None
    """The stored invoice's revision (final periods)."""
    adjustments: Decimal = Decimal(0)
    """Sum of adjustments recorded against that revision."""


def finalization(store: Store, period: str) -> Finalization | None:
    """The period's finalisation, or ``None`` when it is open."""
    _, rows = store.query(sql.PERIOD_SQL, {"period": period}, settings=READ_SETTINGS)
    if not rows:
        return None
    revision, at, currency, source = rows[0]
    return Finalization(period, int(revision), _utc(at), str(currency), str(source))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _stored(
    store: Store, period: str, consumer: str | None, scope: Scope
) -> dict[str, tuple[int, Invoice]]:
    _, rows = store.query(
        sql.LATEST_INVOICES_SQL, sql.scope(period, consumer, tenancy=scope), settings=READ_SETTINGS
    )
    return {str(c): (int(rev), Invoice.from_dict(json.loads(doc))) for c, rev, doc in rows}


def _adjusted(
    store: Store, period: str, consumer: str | None, revisions: dict[str, int], scope: Scope
) -> dict[str, Decimal]:
    params = sql.scope(period, consumer, tenancy=scope)
    _, rows = store.query(sql.ADJUSTMENTS_SQL, params, settings=READ_SETTINGS)
    sums: dict[str, Decimal] = {}
    with localcontext(MONEY_CONTEXT):
        for c, revision, _at, currency, amount, _reason in rows:
            if revisions.get(str(c), 0) == int(revision):
                exact = round_money(Decimal(amount), MINOR_UNITS.get(str(currency), 2))
                sums[str(c)] = sums.get(str(c), Decimal(0)) + exact
    return sums


def _empty(consumer: str, period: str, currency: str) -> Invoice:
    zero = Decimal("0")
    return Invoice(consumer, period, currency, (), zero, zero, zero)


def get_invoices(
    store: Store, pricing: Pricing, period: Period, *, scope: Scope, consumer: str | None = None
) -> dict[str, InvoiceView]:
    """The period's invoices of the consumers ``scope`` admits: stored ones when it is
    finalised, else computed.

    Raises:
        NotVisible: ``consumer`` is outside ``scope``.
    """
    if consumer is not None:
        scope.check(consumer)
    final = finalization(store, period.label) if period.is_month else None
    if final is None:
        computed = compute_invoices(store, pricing, period, scope=scope, consumer=consumer)
        return {c: InvoiceView(inv) for c, inv in computed.items()}
    stored = _stored(store, period.label, consumer, scope)
    revisions = {c: r for c, (r, _) in stored.items()}
    adjustments = _adjusted(store, period.label, consumer, revisions, scope)
    views = {
        c: InvoiceView(inv, final, rev, adjustments.get(c, Decimal(0)))
        for c, (rev, inv) in stored.items()
    }
    if consumer is not None and consumer not in views:
        views[consumer] = InvoiceView(_empty(consumer, period.label, final.currency), final)
    return views


def consumer_known(store: Store, invoice: Invoice) -> bool:
    """Whether the invoice's consumer has ever had usage (in any period) or an invoice.

    An invoice with anything on it is known without a query; an empty one for a consumer
    id never seen (a typo, another tenant's name) must not pass for a real empty bill.
    """
    if invoice.lines or invoice.unpriced or invoice.invalid or invoice.failed_requests:
        return True
    _, rows = store.query(
        sql.KNOWN_CONSUMER_SQL, {"consumer": invoice.consumer}, settings=READ_SETTINGS
    )
    return bool(rows)


def _invoice_row(invoice: Invoice, revision: int, at: datetime) -> list[Any]:
    return [
        invoice.period,
        invoice.consumer,
        revision,
        at,
        invoice.currency,
        invoice.subtotal,
        invoice.markup,
        invoice.total,
        invoice.failed_requests,
        sum(u.requests for u in invoice.unpriced),
        json.dumps(invoice.to_dict(), separators=(",", ":")),
    ]


def _insert_rows(store: Store, table: str, columns: tuple[str, ...], rows: list[list[Any]]) -> None:
    if rows:
        store.insert_columns(table, [list(c) for c in zip(*rows, strict=True)], columns)


def check_ended(period: Period, grace: timedelta, *, now: datetime | None = None) -> None:
    """Refuse a month whose end plus ``grace`` (``stripe.grace``) is still to come.

    Raises:
        PeriodOpenError: with the instant from which it may be finalised.
    """
    now = now or datetime.now(UTC)
    ready = period.end + grace
    if now < ready:
        state = "has not ended" if now < period.end else "ended less than stripe.grace ago"
        raise PeriodOpenError(
            f"period {period.label} {state}: it may be finalised from "
            f"{ready.isoformat().replace('+00:00', 'Z')} (month end + grace {_span(grace)}; late "
            "usage may still arrive); --allow-open (API: allow_open=true) finalises it "
            "anyway, for tests"
        )


def _span(value: timedelta) -> str:
    """A duration as the configuration writes it (``1h30m``)."""
    seconds = int(value.total_seconds())
    parts = [(seconds // 86400, "d"), (seconds // 3600 % 24, "h"), (seconds // 60 % 60, "m"),
             (seconds % 60, "s")]  # fmt: skip
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def finalize(
    store: Store,
    pricing: Pricing,
    label: str,
    *,
    allow_open: bool = False,
    now: datetime | None = None,
) -> tuple[Finalization, dict[str, Invoice]]:
    """Store every consumer's invoice of the month ``label`` as final (revision 1).

    The month must have ended ``pricing.config.grace`` ago (``stripe.grace``, default 1 h)
    unless ``allow_open``. One writer at a time per period (:mod:`._claims`): a concurrent
    finalisation is refused, never a second revision 1.

    Raises:
        ValueError: ``label`` is not a month.
        PeriodOpenError: the month has not ended plus the grace.
        PeriodBusyError: another process is changing the period now.
        InvoiceError: the period is already finalised (use :func:`reprice`).
    """
    period = month(label)
    if not allow_open:
        check_ended(period, pricing.config.grace, now=now)
    _refuse_final(store, period)
    with period_claim(store, period.label, "finalising"):
        _refuse_final(store, period)  # a writer may have finished just before the claim
        invoices = compute_invoices(store, pricing, period, scope=Scope.ALL)
        at = datetime.now(UTC)
        rows = [_invoice_row(i, 1, at) for i in invoices.values()]
        _insert_rows(store, "invoices", sql.INVOICE_COLUMNS, rows)
        source = pricing.catalogue.source if pricing.catalogue is not None else "configuration only"
        row = [period.label, 1, at, pricing.config.currency, source]
        _insert_rows(store, "billing_periods", sql.PERIOD_COLUMNS, [row])
    logger.info("finalised %s: %d invoices", period.label, len(invoices))
    return Finalization(period.label, 1, at, pricing.config.currency, source), invoices


def _refuse_final(store: Store, period: Period) -> None:
    existing = finalization(store, period.label)
    if existing is not None:
        raise InvoiceError(
            f"period {period.label} was finalised at {existing.finalized_at.isoformat()} "
            f"(revision {existing.revision}); use 'meterline reprice --period {period.label}'"
        )


@dataclass(frozen=True)
class RepriceLine:
    """One consumer's invoice, as billed and as the current prices rate it."""

    consumer: str
    billed: Decimal
    """Stored total plus adjustments already recorded against that revision."""
    repriced: Decimal
    """Total at the current prices."""

    @property
    def difference(self) -> Decimal:
        return self.repriced - self.billed

    def to_dict(self) -> dict[str, Any]:
        from meterline.aggregator.pricing import money_str

        return {
            "consumer": self.consumer,
            "billed": money_str(self.billed),
            "repriced": money_str(self.repriced),
            "difference": money_str(self.difference),
        }


@dataclass(frozen=True)
class RepriceResult:
    """What ``reprice`` found and did."""

    period: str
    currency: str
    lines: tuple[RepriceLine, ...]
    action: str
    """``adjusted`` (differences recorded), ``reissued`` (new revision) or ``none``."""
    revision: int
    """The revision in force afterwards."""
    invoices: dict[str, Invoice] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "currency": self.currency,
            "action": self.action,
            "revision": self.revision,
            "consumers": [line.to_dict() for line in self.lines],
        }


def reprice(
    store: Store, pricing: Pricing, label: str, *, force: bool = False, dry_run: bool = False
) -> RepriceResult:
    """Re-rate a finalised month with the current prices.

    Without ``force`` each consumer's difference to what was billed is recorded as an
    adjustment (recorded once: a second run with unchanged prices records nothing);
    with ``force`` every invoice is re-issued as a new revision, which replaces the old
    one and its adjustments. ``dry_run`` only shows the difference.

    One writer at a time per period (:mod:`._claims`), so two concurrent runs never
    record one difference twice.

    Raises:
        ValueError: ``label`` is not a month.
        InvoiceError: the period is not finalised.
        PeriodBusyError: another process is changing the period now.
    """
    period = month(label)
    if dry_run:
        return _reprice(store, pricing, period, force=force, dry_run=True)
    _final_or_refuse(store, period)
    with period_claim(store, period.label, "re-issuing" if force else "repricing"):
        return _reprice(store, pricing, period, force=force, dry_run=False)


def _final_or_refuse(store: Store, period: Period) -> Finalization:
    final = finalization(store, period.label)
    if final is None:
        raise InvoiceError(
            f"period {period.label} is not finalised; run 'meterline finalize --period "
            f"{period.label}' first (open periods are always priced afresh)"
        )
    return final


def _reprice(
    store: Store, pricing: Pricing, period: Period, *, force: bool, dry_run: bool
) -> RepriceResult:
    final = _final_or_refuse(store, period)
    stored = _stored(store, period.label, None, Scope.ALL)
    revisions = {c: r for c, (r, _) in stored.items()}
    adjustments = _adjusted(store, period.label, None, revisions, Scope.ALL)
    fresh = compute_invoices(store, pricing, period, scope=Scope.ALL)
    lines: list[RepriceLine] = []
    with localcontext(MONEY_CONTEXT):
        for consumer in sorted(set(stored) | set(fresh)):
            billed = stored[consumer][1].total if consumer in stored else Decimal(0)
            billed += adjustments.get(consumer, Decimal(0))
            repriced = fresh[consumer].total if consumer in fresh else Decimal(0)
            lines.append(RepriceLine(consumer, billed, repriced))
    changed = [line for line in lines if line.difference != 0]
    now = datetime.now(UTC)
    if dry_run or (not force and not changed):
        return RepriceResult(
            period.label, final.currency, tuple(lines), "none", final.revision, fresh
        )
    if force:
        revision = final.revision + 1
        invoices = [
            fresh.get(c) or _empty(c, period.label, pricing.config.currency)
            for c in sorted(set(stored) | set(fresh))
        ]
        rows = [_invoice_row(i, revision, now) for i in invoices]
        _insert_rows(store, "invoices", sql.INVOICE_COLUMNS, rows)
        source = pricing.catalogue.source if pricing.catalogue is not None else "configuration only"
        row = [period.label, revision, now, pricing.config.currency, source]
        _insert_rows(store, "billing_periods", sql.PERIOD_COLUMNS, [row])
        return RepriceResult(
            period.label, final.currency, tuple(lines), "reissued", revision, fresh
        )
    adjustment_rows: list[list[Any]] = []
    for line in changed:
        invoice = fresh.get(line.consumer) or _empty(line.consumer, period.label, final.currency)
        adjustment_rows.append(
            [
                period.label,
                line.consumer,
                revisions.get(line.consumer, 0),
                now,
                final.currency,
                line.difference,
                "repriced at current prices",
                json.dumps(invoice.to_dict(), separators=(",", ":")),
            ]
        )
    _insert_rows(store, "invoice_adjustments", sql.ADJUSTMENT_COLUMNS, adjustment_rows)
    return RepriceResult(
        period.label, final.currency, tuple(lines), "adjusted", final.revision, fresh
    )
