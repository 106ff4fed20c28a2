"""What a sync run must do for each window: resend, send, correct, cancel, or report.

Contract (pure: reads nothing, sends nothing; ``_sync`` executes the plan):
- A slot (consumer, meter, window) with a row of unknown outcome is *resolved* first:
  re-sent as it was (same identifier and key) while :data:`RESEND_WITHIN` of its
  creation, otherwise reported; nothing new is planned for it until it is resolved.
  A slot with a rejected or reported-unknown row is blocked (reported every run).
- Otherwise the delta ``D = value - accounted`` decides: ``D > 0`` → an ``event`` (the
  window's first) or a ``correction``; ``D < 0`` → cancel accepted rows young enough to
  cancel (``meter_event_adjustments``, within :data:`RESEND_WITHIN`) and send what is
  left, when the cancellable rows cover ``-D``; else a ``credit`` reported for a manual
  credit. A window older than Stripe accepts (35 days, less an hour of margin) gets an
  ``expired`` report instead of any send.
- A consumer without a Stripe customer and unpriced usage held back are reported, never
  written to the ledger (they go out once the customer or the price exists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from meterline.aggregator.stripe._ledger import (
    ACCEPTED,
    PENDING,
    REJECTED,
    REPORTED,
    RESEND_WITHIN,
    LedgerRow,
    Slot,
    accounted,
    identifier,
)
from meterline.aggregator.stripe._mapping import CustomerMap
from meterline.aggregator.stripe._windows import WindowValue

__all__ = ["MAX_AGE", "Plan", "SlotPlan", "plan"]

MAX_AGE = timedelta(days=35) - timedelta(hours=1)
"""The oldest window start sent: Stripe refuses timestamps over 35 days old."""


@dataclass
class SlotPlan:
    """The rows to send for one slot, in order (cancellations before the re-send)."""

    slot: Slot
    customer: str
    rows: list[LedgerRow] = field(default_factory=list)
    """New rows (``pending``) or unresolved ones to re-send."""
    resend: bool = False
    """The rows are unresolved ones being re-sent."""


@dataclass
class Plan:
    sends: list[SlotPlan] = field(default_factory=list)
    reports: list[LedgerRow] = field(default_factory=list)
    """Rows to write as ``reported`` (credits, expiries, unknown outcomes past 24 h)."""
    held: list[dict[str, object]] = field(default_factory=list)
    """Unpriced usage held back."""
    no_customer: list[dict[str, object]] = field(default_factory=list)
    """Windows of consumers without a Stripe customer."""
    blocked: list[dict[str, object]] = field(default_factory=list)
    """Slots with a rejected or reported row (need a person)."""

    @property
    def events(self) -> int:
        return sum(len(s.rows) for s in self.sends)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _item(slot: Slot, **more: object) -> dict[str, object]:
    consumer, event_name, start = slot
    return {"consumer": consumer, "meter": event_name, "window": _iso(start), **more}


def plan(
    values: Sequence[WindowValue],
    ledger: Mapping[Slot, list[LedgerRow]],
    customers: CustomerMap,
    *,
    now: datetime,
    window_seconds: int,
    api: str = "v1",
) -> Plan:
    """Decide what to send for every slot that has a value or ledger rows."""
    out = Plan()
    by_slot = {(v.consumer, v.event_name, v.start): v for v in values}
    written = datetime.now(UTC)  # the new rows' created_at: before any of them is sent
    for slot in sorted(set(by_slot) | set(ledger)):
        rows = ledger.get(slot, [])
        value = by_slot.get(slot)
        if value is not None and value.held:
            out.held.append(_item(slot, tokens=value.held))
        _plan_slot(out, slot, rows, value, customers, now, window_seconds, api, written)
    return out


def _plan_slot(
    out: Plan,
    slot: Slot,
    rows: list[LedgerRow],
    value: WindowValue | None,
    customers: CustomerMap,
    now: datetime,
    window_seconds: int,
    api: str,
    written: datetime,
) -> None:
    consumer, event_name, start = slot
    blocked = [r for r in rows if r.state == REJECTED or (
        r.state == REPORTED and r.kind in ("event", "correction", "cancel"))]  # fmt: skip
    if blocked:
        out.blocked.append(_item(slot, state=blocked[0].state, identifier=blocked[0].identifier,
                                 answer=blocked[0].answer[:300]))  # fmt: skip
        return
    unresolved = [r for r in rows if r.unresolved]
    if unresolved:
        young = [r for r in unresolved if now - r.created_at < RESEND_WITHIN]
        old = [r for r in unresolved if now - r.created_at >= RESEND_WITHIN]
        for r in old:
            out.reports.append(r.moved(REPORTED, (
                f"outcome unknown and Stripe no longer de-duplicates {r.identifier} "
                f"(written {_iso(r.created_at)}): check the meter in Stripe and settle "
                "this window by hand")))  # fmt: skip
        if young and not old:
            out.sends.append(SlotPlan(slot, young[0].customer, young, resend=True))
        return
    target = value.value if value is not None else 0
    delta = target - accounted(rows)
    if delta == 0:
        return
    customer = customers.customer_for(consumer)
    if customer is None:
        out.no_customer.append(_item(slot, value=delta))
        return
    seq = max((r.seq for r in rows), default=0) + 1

    def row(kind: str, amount: int, state: str = PENDING, **more: object) -> LedgerRow:
        nonlocal seq
        made = LedgerRow(
            consumer=consumer,
            event_name=event_name,
            window_start=start,
            window_seconds=window_seconds,
            seq=seq,
            kind=kind,
            identifier=identifier(consumer, event_name, start, window_seconds, seq),
            customer=customer,
            value=amount,
            state=state,
            created_at=written,
            updated_at=written,
            **{"api": api, **more},  # type: ignore[arg-type]
        )
        seq += 1
        return made

    if now - start > MAX_AGE:
        todo = f"bill {delta} by hand" if delta > 0 else f"credit {-delta} by hand"
        out.reports.append(row("expired", delta, REPORTED, answer=(
            f"the window is older than Stripe accepts (35 days): not sent; {todo}")))  # fmt: skip
        return
    sent = [r for r in rows if r.state == ACCEPTED and r.kind in ("event", "correction")]
    if delta > 0:
        kind = "correction" if sent else "event"
        out.sends.append(SlotPlan(slot, customer, [row(kind, delta)]))
        return
    cancelled = {r.target for r in rows if r.kind == "cancel" and r.state == ACCEPTED}
    cancellable = [
        r for r in sent if r.identifier not in cancelled and now - r.created_at < RESEND_WITHIN
    ]
    covered = sum(r.value for r in cancellable)
    if covered < -delta:
        out.reports.append(row("credit", delta, REPORTED, answer=(
            f"{-delta} fewer than Stripe holds and too late to cancel (24 h): "
            "grant a credit by hand")))  # fmt: skip
        return
    planned = [row("cancel", -r.value, target=r.identifier, api="v1") for r in cancellable]
    rest = covered + delta
    if rest > 0:
        kept = len(sent) > len(cancellable)
        planned.append(row("correction" if kept else "event", rest, api="v1"))
    out.sends.append(SlotPlan(slot, customer, planned))
