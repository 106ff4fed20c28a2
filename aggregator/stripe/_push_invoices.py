"""Invoice mode (issue 10 §4): finalised meterline invoices → Stripe invoice items.

``push_invoices(store, pricing, config, "2026-11")`` puts, for each consumer with a
Stripe customer, the month's finalised invoice on a draft invoice of that customer:

- one item per invoice line (description and amount from the line), one for the plan
  markup, one per reprice adjustment of the revision in force; amounts in Stripe's minor
  units (:mod:`._amounts`: lines and markup add up to the invoice total exactly);
- after ``reprice --force`` (a new revision), a credit item for every item pushed for an
  older revision, then the new revision's items: Stripe nets to the new total;
- nothing twice: each item's key (period, consumer, revision, line) is its idempotency
  key and ``metadata.meterline_key``, recorded in ``stripe_invoice_pushes`` before the
  request leaves (:mod:`._pushes`). A run killed anywhere leaves ``pending`` rows; the
  next run lists the consumer's items in Stripe, records those Stripe holds and sends
  only the others (under the same key while it can still be replayed). Re-running sends
  nothing and changes nothing in Stripe.
- the draft: the newest one meterline created for that customer and period while Stripe
  still has it as a draft, else a new one (an invoice finalised in Stripe takes no items).

Skipped: an item whose amount is 0 in Stripe's minor unit (a line that rounds to 0.00):
listed in ``zero`` and the summary, not pushed, on every run alike.

Refused: a period that is not finalised (:class:`InvoiceError`). Reported, not sent: a
consumer without a Stripe customer (the others are pushed). ``dry_run`` reads only the
store: it lists what would be pushed and sends nothing.

Known limits: two pushes of one period at the same time may each create a draft (their
items still go out once, under the same keys); a request stalled inside Stripe while a
rerun finds its invoice re-issued is not credited (the rerun saw it absent).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from meterline.aggregator.invoices import Invoice, InvoiceError, Period, finalization, month
from meterline.aggregator.invoices import get_invoices as _get_invoices
from meterline.aggregator.pricing import money_str
from meterline.aggregator.queries import READ_SETTINGS
from meterline.aggregator.queries import invoices as sql
from meterline.aggregator.stripe._amounts import split_exact, stripe_exponent
from meterline.aggregator.stripe._client import ACCEPTED, REJECTED, StripeEnv
from meterline.aggregator.stripe._config import StripeConfig
from meterline.aggregator.stripe._invoice_client import FINAL_5XX, InvoicesClient, created_id
from meterline.aggregator.stripe._mapping import load_customer_map
from meterline.aggregator.stripe._pushes import (
    PENDING,
    PUSHED,
    SUPERSEDED,
    UNKNOWN,
    Pushes,
    PushRow,
)
from meterline.aggregator.tenancy import Scope
from meterline.store import Store

logger = logging.getLogger(__name__)

__all__ = ["PushSummary", "push_invoices"]

ITEM_KINDS = ("line", "markup", "adjustment")
"""Items of one revision (credits cancel them after a re-issue)."""


@dataclass
class PushSummary:
    """What one run pushed, found already pushed, reported or could not settle."""

    period: str
    revision: int
    dry_run: bool
    pushed: list[dict[str, Any]] = field(default_factory=list)
    """Items created now (dry run: that would be)."""
    drafts: int = 0
    """Draft invoices created now."""
    unchanged: int = 0
    """Items Stripe already held (pushed by an earlier run)."""
    recovered: int = 0
    """Items of an interrupted run found in Stripe and recorded now."""
    reported: list[dict[str, Any]] = field(default_factory=list)
    """Consumers not pushed (no Stripe customer)."""
    zero: list[dict[str, Any]] = field(default_factory=list)
    """Lines (and credits, adjustments) of 0 in Stripe's minor unit: not pushed."""
    unknown: list[dict[str, Any]] = field(default_factory=list)
    """Requests without a definite answer: run again."""
    rejected: list[dict[str, Any]] = field(default_factory=list)
    invoices: list[dict[str, Any]] = field(default_factory=list)
    """Per consumer: meterline's total (with adjustments) and what Stripe holds by the record."""

    @property
    def ok(self) -> bool:
        """Nothing left unsettled, and Stripe holds each invoice's total by the record."""
        return not self.unknown and not self.rejected and all(i["ok"] for i in self.invoices)

    def problem(self) -> str | None:
        """One line for people when :attr:`ok` is false."""
        if self.ok:
            return None
        if self.unknown or self.rejected:
            return (
                f"{len(self.unknown)} requests without an answer and {len(self.rejected)} "
                "refused by Stripe; run push-invoices again"
            )
        return "Stripe does not hold every invoice's total by the record; run it again"

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "revision": self.revision,
            "dry_run": self.dry_run,
            "pushed": self.pushed,
            "drafts": self.drafts,
            "unchanged": self.unchanged,
            "recovered": self.recovered,
            "reported": self.reported,
            "zero": self.zero,
            "unknown": self.unknown,
            "rejected": self.rejected,
            "invoices": self.invoices,
            "ok": self.ok,
            "error": self.problem(),
        }

    def line(self) -> str:
        kinds = [p["kind"] for p in self.pushed]
        verb = "would push" if self.dry_run else "pushed"
        parts = [
            f"{verb} {len(self.pushed)} items ({kinds.count('credit')} credits, "
            f"{kinds.count('adjustment')} adjustments)",
            f"drafts created {self.drafts}",
            f"unchanged {self.unchanged}",
            f"reported {len(self.reported)}",
        ]
        if self.zero:
            parts.append(f"skipped {len(self.zero)} of amount 0")
        if self.recovered:
            parts.append(f"recovered {self.recovered}")
        if self.unknown or self.rejected:
            parts += [f"unknown {len(self.unknown)}", f"rejected {len(self.rejected)}"]
        return f"stripe push-invoices {self.period} (revision {self.revision}): " + ", ".join(parts)


def _epoch(at: datetime) -> int:
    return int(at.timestamp())


def _line_text(period: str, line: Any) -> str:
    price = money_str(line.unit_price_per_million)
    return (
        f"{period} {line.provider} {line.model} {line.token_type}: "
        f"{line.quantity:,} tokens at {price} per 1M"
    )


def _adjustments(store: Store, period: str, consumer: str, revision: int) -> list[tuple[Any, ...]]:
    params = sql.scope(period, consumer, tenancy=Scope.ALL)
    _, rows = store.query(sql.ADJUSTMENTS_SQL, params, settings=READ_SETTINGS)
    return [r for r in rows if str(r[0]) == consumer and int(r[1]) == revision]


def wanted_items(
    invoice: Invoice,
    revision: int,
    customer: str,
    *,
    adjustments: list[tuple[Any, ...]],
    earlier: dict[str, PushRow],
    zero: list[PushRow] | None = None,
) -> list[PushRow]:
    """Every item Stripe must hold for ``invoice`` (revision ``revision``), credits of
    items pushed for older revisions (``earlier``: the consumer's recorded rows) first.

    An item of 0 in Stripe's minor unit (a line that rounds to 0.00) is left out — it
    would only clutter the Stripe invoice — and appended to ``zero`` when given; its key
    is kept free (keys are by line index), so the others are unchanged."""
    period, consumer, currency = invoice.period, invoice.consumer, invoice.currency.lower()

    def row(key: str, kind: str, amount: int, text: str, **kw: Any) -> PushRow:
        fields: dict[str, Any] = {"revision": revision, "customer": customer,
                                  "currency": currency, **kw}  # fmt: skip
        return PushRow(period, consumer, key, kind, amount=amount, description=text, **fields)

    out = [
        row(
            f"credit/{r.key}",
            "credit",
            -r.amount,
            f"Credit: {r.description} (revision {r.revision}, re-issued as {revision})",
            customer=r.customer,
            currency=r.currency,
        )
        for r in earlier.values()
        if r.kind in ITEM_KINDS and r.revision < revision and r.state == PUSHED
    ]
    base: list[tuple[str, str, Decimal, str]] = [
        (f"r{revision}/line/{i}", "line", line.amount, _line_text(period, line))
        for i, line in enumerate(invoice.lines)
    ]
    if invoice.markup != 0:
        base.append((f"r{revision}/markup", "markup", invoice.markup, f"{period} plan markup"))
    amounts = split_exact([b[2] for b in base], currency)
    out += [row(k, kind, a, t) for (k, kind, _, t), a in zip(base, amounts, strict=True)]
    for _c, _rev, at, _cur, amount, reason in adjustments:
        micros = int(_utc(at).timestamp() * 1_000_000)
        (units,) = split_exact([Decimal(amount)], currency)
        text = f"{period} adjustment: {reason} ({_utc(at).date().isoformat()})"
        out.append(row(f"r{revision}/adj/{micros}", "adjustment", units, text))
    if zero is not None:
        zero.extend(r for r in out if r.amount == 0)
    return [r for r in out if r.amount != 0]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _public(r: PushRow) -> dict[str, Any]:
    units = Decimal(r.amount).scaleb(-stripe_exponent(r.currency))
    return {
        "consumer": r.consumer,
        "customer": r.customer,
        "kind": r.kind,
        "key": r.key,
        "amount": money_str(units),
        "currency": r.currency,
        "minor_units": r.amount,
        "description": r.description,
        "stripe_id": r.stripe_id,
        "state": r.state,
    }


class _Run:
    """One push: the record, the client, the summary being built."""

    def __init__(
        self, pushes: Pushes, client: InvoicesClient | None, summary: PushSummary, period: Period
    ) -> None:
        self.pushes = pushes
        self.client = client
        self.summary = summary
        self.period = period

    def _send(self, row: PushRow, rows: dict[str, PushRow]) -> PushRow:
        """Write ``row`` pending, send it, write Stripe's answer; returns the last version."""
        return self._send_all([row], rows)[0]

    def _send_all(self, batch: list[PushRow], rows: dict[str, PushRow]) -> list[PushRow]:
        """Write every row of ``batch`` pending (one insert), send them one by one, then
        write the answers (one insert, also when a send raised). A kill in between leaves
        rows pending: the next run settles them from Stripe (:meth:`settle`)."""
        self.pushes.write(batch)
        rows.update((r.key, r) for r in batch)
        done: list[PushRow] = []
        try:
            for row in batch:
                done.append(self._request(row))
        finally:
            self.pushes.write(done)
            rows.update((r.key, r) for r in done)
        return done

    def _request(self, row: PushRow) -> PushRow:
        """Send one row's request; its new state (not written)."""
        assert self.client is not None
        if row.kind == "draft":
            params: dict[str, Any] = {
                "customer": row.customer,
                "currency": row.currency,
                "auto_advance": False,
                "pending_invoice_items_behavior": "exclude",
                "description": row.description,
                "metadata": {"meterline_key": row.meterline_key, "meterline_period": row.period},
            }
            answer = self.client.create_draft(key=row.idempotency_key, params=params)
        else:
            params = {
                "customer": row.customer,
                "invoice": row.stripe_invoice,
                "amount": row.amount,
                "currency": row.currency,
                "description": row.description,
                "period": {"start": _epoch(self.period.start), "end": _epoch(self.period.end)},
                "metadata": {
                    "meterline_key": row.meterline_key,
                    "meterline_period": row.period,
                    "meterline_revision": str(row.revision),
                    "meterline_kind": row.kind,
                },
            }
            answer = self.client.create_item(key=row.idempotency_key, params=params)
        if answer.outcome == ACCEPTED:
            done = row.moved(PUSHED, answer.detail, created_id(answer))
        elif answer.outcome == REJECTED:
            done = row.moved(REJECTED, answer.detail)
            self.summary.rejected.append({**_public(done), "answer": answer.detail})
        else:  # unknown, throttled: the next run lists Stripe first
            done = row.moved(UNKNOWN, answer.detail)
            self.summary.unknown.append({**_public(done), "answer": answer.detail})
        if done.state == PUSHED:
            if row.kind == "draft":
                self.summary.drafts += 1
            else:
                self.summary.pushed.append(_public(done))
        return done

    def settle(self, rows: dict[str, PushRow]) -> set[str]:
        """Rows of unknown outcome: recorded ``pushed`` when Stripe holds them; returns the
        keys of those it does not hold (absent: safe to send again)."""
        assert self.client is not None
        absent: set[str] = set()
        listed: dict[str, dict[str, str]] = {}
        for row in [r for r in rows.values() if r.unresolved]:
            where = row.customer if row.kind == "draft" else row.stripe_invoice
            if where not in listed:
                listed[where] = (
                    self.client.drafts_of(where)
                    if row.kind == "draft"
                    else self.client.items_of(where)
                )
            found = listed[where].get(row.meterline_key)
            if found:
                done = row.moved(PUSHED, "found in Stripe after an interrupted run", found)
                self.pushes.write([done])
                rows[row.key] = done
                self.summary.recovered += 1
            else:
                absent.add(row.key)
        return absent

    def draft_for(
        self, consumer: str, customer: str, currency: str, rows: dict[str, PushRow],
        absent: set[str],
    ) -> str | None:  # fmt: skip
        """A draft invoice of ``customer`` for this period, created when needed."""
        assert self.client is not None
        drafts = [r for r in rows.values() if r.kind == "draft" and r.customer == customer]
        drafts.sort(key=lambda r: r.created_at)
        latest = drafts[-1] if drafts else None
        if latest is not None and latest.state == PUSHED:
            if self.client.invoice_status(latest.stripe_id) == "draft":
                return latest.stripe_id
            latest = None  # finalised (or deleted) in Stripe: items need a new draft
        if latest is not None and latest.key in absent:  # re-send the same draft request
            bump = int(latest.answer.startswith(FINAL_5XX))
            row = replace(latest.moved(PENDING), attempt=latest.attempt + bump)
        else:
            row = PushRow(
                self.period.label, consumer, f"draft/{customer}/{len(drafts) + 1}", "draft",
                revision=self.summary.revision, customer=customer, currency=currency, amount=0,
                description=f"meterline {self.period.label}",
            )  # fmt: skip
        done = self._send(row, rows)
        return done.stripe_id if done.state == PUSHED else None

    def items(self, wanted: list[PushRow], draft: str, rows: dict[str, PushRow]) -> None:
        """Send the wanted items to ``draft``, each under its key (a new attempt only when
        the old key cannot serve)."""
        batch = []
        for want in wanted:
            prev = rows.get(want.key)
            if prev is None:
                batch.append(replace(want, stripe_invoice=draft))
                continue
            # prev is unresolved and absent in Stripe (settled before), rejected or superseded
            bump = (
                prev.stripe_invoice != draft  # other parameters: the old key would be refused
                or prev.state not in (PENDING, UNKNOWN)
                or prev.answer.startswith(FINAL_5XX)  # the old key only replays a 5xx
            )
            batch.append(replace(want, stripe_invoice=draft, attempt=prev.attempt + int(bump),
                                 created_at=prev.created_at))  # fmt: skip
        self._send_all(batch, rows)


def _push_one(
    run: _Run, consumer: str, invoice: Invoice, revision: int, customer: str,
    rows: dict[str, PushRow], store: Store,
) -> None:  # fmt: skip
    """Settle the consumer's interrupted rows, then send what Stripe lacks."""
    absent = run.settle(rows)
    want = wanted_items(invoice, revision, customer,
                        adjustments=_adjustments(store, invoice.period, consumer, revision),
                        earlier=rows)  # fmt: skip
    keys = {w.key for w in want}
    for key in sorted(absent - keys):
        if rows[key].kind != "draft":
            rows[key] = rows[key].moved(SUPERSEDED, "absent in Stripe; no longer wanted")
            run.pushes.write([rows[key]])
    todo = [w for w in want if rows.get(w.key) is None or rows[w.key].state != PUSHED]
    run.summary.unchanged += len(want) - len(todo)
    for customer_id in sorted({w.customer for w in todo}):
        mine = [w for w in todo if w.customer == customer_id]
        draft = run.draft_for(consumer, customer_id, mine[0].currency, rows, absent)
        if draft is None:
            continue  # recorded unknown/rejected: the next run resumes
        run.items(mine, draft, rows)


def push_invoices(
    store: Store,
    pricing: Any,
    config: StripeConfig | None,
    label: str,
    *,
    dry_run: bool = False,
    env: StripeEnv | None = None,
    client: InvoicesClient | None = None,
) -> PushSummary:
    """Push the finalised invoices of the month ``label`` to Stripe (module docstring).

    Raises:
        ValueError: ``label`` is not a month.
        InvoiceError: the month is not finalised.
        StripeAuthError: no key, or Stripe refused it.
    """
    period = month(label)
    final = finalization(store, period.label)
    if final is None:
        raise InvoiceError(
            f"period {period.label} is not finalised: only finalised invoices are pushed; run "
            f"'meterline finalize --period {period.label}' first"
        )
    views = _get_invoices(store, pricing, period, scope=Scope.ALL)
    mapping = load_customer_map(store, config)
    pushes = Pushes(store)
    recorded = pushes.of_period(period.label)
    summary = PushSummary(period.label, final.revision, dry_run)
    if not dry_run and client is None:
        client = InvoicesClient(env or StripeEnv.from_environ())
    run = _Run(pushes, client, summary, period)
    for consumer in sorted(set(views) | set(recorded)):
        rows = dict(recorded.get(consumer, {}))
        view = views.get(consumer)
        if view is None:
            continue  # recorded for a consumer the period no longer has: nothing to add
        invoice, revision = view.invoice, view.revision or final.revision
        customer = mapping.customer_for(consumer)
        if customer is None:
            if invoice.lines or invoice.markup or view.adjustments:
                summary.reported.append({"consumer": consumer, "total": money_str(invoice.total),
                                         "reason": "no Stripe customer (stripe.customers or "
                                                   "PUT /v1/consumers/{consumer})"})  # fmt: skip
            continue
        zero: list[PushRow] = []
        want = wanted_items(invoice, revision, customer,
                            adjustments=_adjustments(store, period.label, consumer, revision),
                            earlier=rows, zero=zero)  # fmt: skip
        summary.zero += [_public(z) for z in zero]
        if dry_run:
            todo = [w for w in want if rows.get(w.key) is None or rows[w.key].state != PUSHED]
            summary.unchanged += len(want) - len(todo)
            summary.pushed += [_public(w) for w in todo]
            continue
        try:
            _push_one(run, consumer, invoice, revision, customer, rows, store)
        except RuntimeError as exc:  # Stripe did not answer a listing or a retrieval
            summary.unknown.append({"consumer": consumer, "customer": customer,
                                    "answer": str(exc)})  # fmt: skip
            continue
        want = wanted_items(invoice, revision, customer,
                            adjustments=_adjustments(store, period.label, consumer, revision),
                            earlier=rows)  # fmt: skip
        held = sum(r.amount for r in rows.values() if r.kind != "draft" and r.state == PUSHED)
        expected = sum(w.amount for w in want if w.kind in ITEM_KINDS)
        summary.invoices.append(
            {
                "consumer": consumer,
                "customer": customer,
                "currency": invoice.currency.lower(),
                "total": money_str(invoice.total + view.adjustments),
                "expected_minor_units": expected,
                "in_stripe_minor_units": held,
                "unpriced_requests": sum(u.requests for u in invoice.unpriced),
                "ok": held == expected,
            }
        )
    logger.info("stripe push-invoices: %s", summary.line())
    return summary
