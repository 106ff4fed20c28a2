"""``meterline stripe sync``: closed windows to Stripe meter events, exactly once.

Contract:
- A run rates what is stale, reads each closed window's value per consumer and meter
  (:mod:`._windows`), reads the ledger, plans (:mod:`._plan`) and sends. Every new row
  is written ``pending`` before its request leaves (a whole chunk in one insert); the
  answers are written after the chunk. A run killed anywhere leaves only ``pending`` rows
  behind, which the next run re-sends with the same identifier and idempotency key
  (Stripe answers with the saved result or "identifier already exists": accepted) before
  it computes anything new for their windows. Re-running sends nothing new.
- At most one request in flight per customer and meter: a v1 chunk is split into one
  queue per (customer, meter), each worked through by one thread; v2 stream requests are
  sent one at a time. Cancellations (v1 only) and the value re-sent after them go in
  order; a row after a failed one is not written nor sent.
- API: ``v1``, ``v2`` (streams, 100 events a request), or ``auto`` — v2 when more than
  :data:`AUTO_V2_ABOVE` events are to be sent. Re-sends keep the API of their first send.
- ``dry_run`` writes and sends nothing; the summary lists what would be sent.
- Before new usage goes to a customer, Stripe is asked whether it has it
  (:func:`_drop_missing`): a missing one's windows are reported and stay pending.
- The summary's ``ok`` is false when a row ended unknown, rejected or throttled, or a
  customer was missing (``meterline stripe sync`` then exits 1). A run re-plans after
  re-sends (up to three rounds) but stops after a round with no definite answer.
- Runs in one process are serialised per store. Two processes syncing one ClickHouse
  server do not double-count (equal identifiers; Stripe de-duplicates and refuses a key
  reused with another body) but may block a window for a person to settle.

Known limits: only windows starting in the last :data:`LOOKBACK` are looked at (older
ones cannot be sent anyway); a customer re-assigned after a send gets later corrections
under the new customer; Stripe's asynchronous rejections of v2 events (an unknown
meter, a customer deleted after the check) are not read back into the ledger.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from meterline.aggregator.stripe._client import (
    ACCEPTED,
    REJECTED,
    STREAM_MAX_EVENTS,
    THROTTLED,
    UNKNOWN,
    Answer,
    MeterEventsClient,
)
from meterline.aggregator.stripe._config import StripeConfig
from meterline.aggregator.stripe._ledger import (
    ACCEPTED as ROW_ACCEPTED,
)
from meterline.aggregator.stripe._ledger import (
    REJECTED as ROW_REJECTED,
)
from meterline.aggregator.stripe._ledger import (
    SENT_UNKNOWN,
    Ledger,
    LedgerRow,
)
from meterline.aggregator.stripe._mapping import load_customer_map
from meterline.aggregator.stripe._plan import Plan, SlotPlan, plan
from meterline.aggregator.stripe._windows import closed_until, floor_window, window_values
from meterline.store import Store

logger = logging.getLogger(__name__)

__all__ = ["AUTO_V2_ABOVE", "LOOKBACK", "SyncSummary", "run_sync"]

AUTO_V2_ABOVE = 300
"""``--api auto`` streams (v2) when more events than this are to be sent."""
LOOKBACK = timedelta(days=62)
"""Windows starting this long before now are read (Stripe takes 35 days)."""
V1_CHUNK = 500
V1_WORKERS = 4
V2_CHUNK = 5 * STREAM_MAX_EVENTS
"""v2: the new rows of this many events are written ``pending`` in one insert before
the first of their stream requests leaves (as v1 writes a chunk's first rows); their
answers go in the same insert as the next chunk's new rows. An insert costs the embedded
store ~7 ms of CPU whatever its size: one per 100-event request cost more than the SDK."""

_STATE = {ACCEPTED: ROW_ACCEPTED, REJECTED: ROW_REJECTED, UNKNOWN: SENT_UNKNOWN}

_run_locks: weakref.WeakKeyDictionary[Store, threading.Lock] = weakref.WeakKeyDictionary()
_run_locks_guard = threading.Lock()


def _run_lock(store: Store) -> threading.Lock:
    with _run_locks_guard:
        lock = _run_locks.get(store)
        if lock is None:
            lock = _run_locks[store] = threading.Lock()
        return lock


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SyncSummary:
    """What a run did (``meterline stripe sync`` prints it; ``stripe_runs`` keeps it)."""

    api: str
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    sent: int = 0
    """Windows' first events accepted."""
    corrections: int = 0
    """Corrections (late usage) accepted."""
    cancels: int = 0
    """Cancellations accepted (a negative correction)."""
    resent: int = 0
    """Rows of unknown outcome re-sent and settled."""
    unknown: int = 0
    """Rows whose requests ended with no answer (re-sent by the next run); each row once,
    however many rounds of the run tried it."""
    rejected: int = 0
    throttled: int = 0
    """Rows not sent because Stripe kept answering 429 (sent by the next run)."""
    held: list[dict[str, object]] = field(default_factory=list)
    reported: list[dict[str, object]] = field(default_factory=list)
    would_send: list[dict[str, object]] = field(default_factory=list)
    missing_customers: list[str] = field(default_factory=list)
    """Customer ids Stripe says do not exist: their usage stays pending, not sent."""
    _unsettled: dict[str, str] = field(default_factory=dict, repr=False)
    """Identifier → ``unknown``/``throttled`` for rows still without a definite answer."""

    def settle(self, identifier: str, outcome: str | None) -> None:
        """Count a row's latest outcome once (a row re-tried by a later round moves)."""
        previous = self._unsettled.pop(identifier, None)
        if previous == UNKNOWN:
            self.unknown -= 1
        elif previous == THROTTLED:
            self.throttled -= 1
        if outcome == UNKNOWN:
            self.unknown += 1
        elif outcome == THROTTLED:
            self.throttled += 1
        if outcome in (UNKNOWN, THROTTLED):
            self._unsettled[identifier] = outcome

    @property
    def ok(self) -> bool:
        """Everything due was settled: nothing of unknown outcome, refused, throttled or
        kept back for a customer Stripe does not have (a dry run is always ok)."""
        if self.dry_run:
            return True
        return not (self.unknown or self.rejected or self.throttled or self.missing_customers)

    def problem(self) -> str | None:
        """One line for people when :attr:`ok` is false: what is pending, what to do."""
        if self.ok:
            return None
        parts = []
        if self.unknown or self.throttled:
            parts.append(
                f"{self.unknown + self.throttled} events without a definite answer from "
                f"Stripe (unknown {self.unknown}, throttled {self.throttled}) stay pending: "
                "check that Stripe is reachable and run the sync again"
            )
        if self.rejected:
            parts.append(f"{self.rejected} events refused by Stripe: see 'Reported'")
        if self.missing_customers:
            parts.append(
                f"Stripe has no customer {', '.join(self.missing_customers)}: their usage "
                "stays pending; fix stripe.customers or PUT /v1/consumers/{consumer}"
            )
        return "stripe sync incomplete: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_unsettled")
        data["ok"] = self.ok
        data["error"] = self.problem()
        data["started_at"] = _iso(self.started_at)
        data["finished_at"] = _iso(self.finished_at) if self.finished_at else None
        return data

    def line(self) -> str:
        """One line for people."""
        verb = "would send" if self.dry_run else "sent"
        count = len(self.would_send) if self.dry_run else self.sent
        parts = [f"{verb} {count}", f"corrections {self.corrections}",
                 f"cancels {self.cancels}", f"held {len(self.held)}",
                 f"reported {len(self.reported)}"]  # fmt: skip
        if self.resent:
            parts.append(f"re-sent {self.resent}")
        if self.unknown or self.rejected or self.throttled:
            parts.append(
                f"unknown {self.unknown}, rejected {self.rejected}, throttled {self.throttled}"
            )
        return f"stripe sync ({self.api}): " + ", ".join(parts)


def _row_item(r: LedgerRow, **more: object) -> dict[str, object]:
    return {
        "consumer": r.consumer,
        "meter": r.event_name,
        "window": _iso(r.window_start),
        "kind": r.kind,
        "value": r.value,
        "identifier": r.identifier,
        "customer": r.customer,
        **more,
    }


class _Runner:
    def __init__(
        self,
        ledger: Ledger,
        client: MeterEventsClient,
        summary: SyncSummary,
        progress: Callable[[int, int], None] | None,
        total: int,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.summary = summary
        self.progress = progress
        self.total = total
        self.done = 0
        self.definite = 0
        """Requests of this round that got a definite answer (accepted or refused)."""
        self._lock = threading.Lock()

    def _count(self, row: LedgerRow, answer: Answer, resend: bool) -> None:
        with self._lock:
            s = self.summary
            if answer.outcome in (ACCEPTED, REJECTED):
                self.definite += 1
            if answer.outcome == ACCEPTED:
                if resend:
                    s.resent += 1
                elif row.kind == "event":
                    s.sent += 1
                elif row.kind == "correction":
                    s.corrections += 1
                elif row.kind == "cancel":
                    s.cancels += 1
            elif answer.outcome == REJECTED:
                s.rejected += 1
                s.reported.append(_row_item(row, reason="rejected by Stripe",
                                            answer=answer.detail[:300]))  # fmt: skip
            s.settle(row.identifier, answer.outcome)
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total)

    def _send_v1(self, row: LedgerRow) -> Answer:
        if row.kind == "cancel":
            return self.client.cancel(
                event_name=row.event_name, identifier=row.target, key=row.identifier
            )
        return self.client.meter_event(
            event_name=row.event_name,
            customer=row.customer,
            value=row.value,
            identifier=row.identifier,
            timestamp=row.window_start,
        )

    def _queue(self, plans: Sequence[SlotPlan]) -> list[LedgerRow]:
        """One (customer, meter)'s slots, in order; returns the rows' new states."""
        outcomes: list[LedgerRow] = []
        for sp in plans:
            if self.client.stopping:
                break
            for i, row in enumerate(sp.rows):
                if i and not sp.resend:  # written only once the rows before it held
                    self.ledger.write([row])
                answer = self._send_v1(row)
                self._count(row, answer, sp.resend)
                if answer.outcome in _STATE:
                    outcomes.append(row.moved(_STATE[answer.outcome], answer.detail))
                if answer.outcome != ACCEPTED:
                    break
        return outcomes

    def v1(self, plans: Sequence[SlotPlan]) -> None:
        for begin in range(0, len(plans), V1_CHUNK):
            if self.client.stopping:
                return
            chunk = plans[begin : begin + V1_CHUNK]
            self.ledger.write([sp.rows[0] for sp in chunk if not sp.resend])
            queues: dict[tuple[str, str], list[SlotPlan]] = {}
            for sp in chunk:
                queues.setdefault((sp.customer, sp.slot[1]), []).append(sp)
            if len(queues) == 1:
                results = [self._queue(next(iter(queues.values())))]
            else:
                with ThreadPoolExecutor(min(V1_WORKERS, len(queues))) as pool:
                    results = list(pool.map(self._queue, queues.values()))
            self.ledger.write([row for rows in results for row in rows])

    def v2(self, plans: Sequence[SlotPlan]) -> None:
        rows = [(row, sp.resend) for sp in plans for row in sp.rows]
        answered: list[LedgerRow] = []
        try:
            for begin in range(0, len(rows), V2_CHUNK):
                if self.client.stopping:
                    return
                chunk = rows[begin : begin + V2_CHUNK]
                # the previous chunk's answers and this chunk's new rows: one insert
                self.ledger.write(answered + [r for r, resend in chunk if not resend])
                answered = []
                for first in range(0, len(chunk), STREAM_MAX_EVENTS):
                    if self.client.stopping:
                        return
                    batch = chunk[first : first + STREAM_MAX_EVENTS]
                    answer = self.client.stream(
                        [_event(r) for r, _ in batch], key=_stream_key([r for r, _ in batch])
                    )
                    for r, resend in batch:
                        self._count(r, answer, resend)
                    if answer.outcome in _STATE:
                        state, at = _STATE[answer.outcome], datetime.now(UTC)
                        answered += [r.moved(state, answer.detail, at) for r, _ in batch]
        finally:
            self.ledger.write(answered)


def _event(r: LedgerRow) -> dict[str, Any]:
    """One v2 stream event of a ledger row."""
    return {
        "event_name": r.event_name,
        "identifier": r.identifier,
        "timestamp": _iso(r.window_start),
        "payload": {"stripe_customer_id": r.customer, "value": str(r.value)},
    }


def _stream_key(rows: Sequence[LedgerRow]) -> str:
    import hashlib

    digest = hashlib.sha256("\n".join(r.identifier for r in rows).encode()).hexdigest()
    return f"mlv2-{digest[:40]}"


def _split(p: Plan, api: str) -> tuple[list[SlotPlan], list[SlotPlan]]:
    """(v1, v2) slot plans: cancellations, their re-sends and v1 rows stay on v1."""
    v1: list[SlotPlan] = []
    v2: list[SlotPlan] = []
    for sp in p.sends:
        streamable = api == "v2" and all(r.kind != "cancel" and r.api == "v2" for r in sp.rows)
        (v2 if streamable else v1).append(sp)
    return v1, v2


def _tty_progress() -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        if total >= 50 and (done % 25 == 0 or done == total):
            sys.stderr.write(f"\rstripe sync: {done}/{total} events")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return show


def _plan_now(store: Store, config: StripeConfig, now: datetime, api: str) -> tuple[Plan, str]:
    end = closed_until(now, config)
    start = floor_window(now - LOOKBACK, config.window)
    values = window_values(store, config, start=start, end=end)
    slots = Ledger(store).slots(start, end)
    customers = load_customer_map(store, config)
    seconds = int(config.window_length.total_seconds())
    chosen = api
    if api == "auto":
        draft = plan(values, slots, customers, now=now, window_seconds=seconds, api="v1")
        chosen = "v2" if draft.events > AUTO_V2_ABOVE else "v1"
    return plan(values, slots, customers, now=now, window_seconds=seconds, api=chosen), chosen


MISSING_CUSTOMER = (
    "Stripe has no customer {customer} (or it was deleted): not sent, kept pending; fix "
    "stripe.customers or PUT /v1/consumers/{{consumer}}"
)


def _drop_missing(
    p: Plan, client: MeterEventsClient, summary: SyncSummary, checked: dict[str, bool | None]
) -> None:
    """Take out of ``p`` the new sends for customers Stripe says it does not have.

    Stripe (v1 and v2) answers 200 for an event of an unknown customer and drops it later
    (a meter error report): sent, it would be lost while the ledger says accepted. Those
    windows are reported and written nowhere — pending, sent once the mapping is fixed.
    Re-sends keep going (their outcome must be settled); a customer Stripe could not be
    asked about is sent to (the send then fails or succeeds on its own). Customers are
    asked about four at a time (one read each per run; the client keeps the found ones an
    hour).
    """
    todo = sorted({sp.customer for sp in p.sends if not sp.resend} - set(checked))
    if len(todo) > 1:
        with ThreadPoolExecutor(min(V1_WORKERS, len(todo))) as pool:
            checked.update(zip(todo, pool.map(client.customer_exists, todo), strict=True))
    elif todo:
        checked[todo[0]] = client.customer_exists(todo[0])
    kept = []
    for sp in p.sends:
        if sp.resend or checked[sp.customer] is not False:
            kept.append(sp)
            continue
        for r in sp.rows:
            if not any(i.get("identifier") == r.identifier for i in summary.reported):
                summary.reported.append(
                    _row_item(r, reason=MISSING_CUSTOMER.format(customer=sp.customer))
                )
        if sp.customer not in summary.missing_customers:
            summary.missing_customers.append(sp.customer)
    p.sends = kept


def rate_stale(store: Store, pricing: Any, now: datetime) -> None:
    """Rate the months of the windows a run reads whose usage or prices changed."""
    if pricing is None:
        return
    from meterline.aggregator.rated import ensure_rated

    ensure_rated(store, pricing, now - LOOKBACK - timedelta(days=1), now)


def run_sync(
    store: Store,
    config: StripeConfig,
    *,
    pricing: Any = None,
    client: MeterEventsClient | None = None,
    api: str = "auto",
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SyncSummary:
    """Send every closed window's usage that Stripe does not hold yet.

    Args:
        pricing: rate stale months first (``None``: the table is current already).
        client: the Stripe client (required unless ``dry_run``).
        api: ``v1``, ``v2`` or ``auto``.
        progress: called with (done, total) as requests finish; default: a line on
            stderr when it is a terminal.

    Raises:
        StripeAuthError: Stripe refused the key (rows stay pending for the next run).
        ValueError: ``api`` is not one of the three.
    """
    if api not in ("v1", "v2", "auto"):
        raise ValueError(f"api {api!r} must be v1, v2 or auto")
    if not config.meters:
        raise ValueError("stripe.meters is empty: configure at least one meter")
    with _run_lock(store):
        started = datetime.now(UTC)
        now = now or started
        rate_stale(store, pricing, now)
        p, chosen = _plan_now(store, config, now, api)
        summary = SyncSummary(api=chosen, dry_run=dry_run, started_at=started)
        summary.held = p.held
        summary.reported = [_row_item(r, reason=r.answer) for r in p.reports]
        summary.reported += [{**i, "reason": "no Stripe customer"} for i in p.no_customer]
        summary.reported += [{**i, "reason": "blocked: settle by hand"} for i in p.blocked]
        if dry_run:
            summary.would_send = [_row_item(r) for sp in p.sends for r in sp.rows]
            summary.finished_at = datetime.now(UTC)
            return summary
        if client is None:
            raise ValueError("a Stripe client is needed to send (or use dry_run)")
        ledger = Ledger(store)
        ledger.write(p.reports)
        checked: dict[str, bool | None] = {}
        for _round in range(3):
            # re-sends settle first, then what is left is planned
            _drop_missing(p, client, summary, checked)
            v1, v2 = _split(p, chosen)
            runner = _Runner(ledger, client, summary, progress or _tty_progress(), p.events)
            if v1:
                runner.v1(v1)
            if v2:
                runner.v2(v2)
            if client.stopping or not any(sp.resend for sp in p.sends) or not runner.definite:
                break  # nothing to settle, or Stripe answered nothing definite: a rerun will
            p, _ = _plan_now(store, config, now, chosen)
            ledger.write(p.reports)
            summary.reported += [_row_item(r, reason=r.answer) for r in p.reports]
        summary.finished_at = datetime.now(UTC)
        _record(store, summary)
        logger.info("%s", summary.line())
        return summary


def _record(store: Store, summary: SyncSummary) -> None:
    store.insert_columns(
        "stripe_runs",
        [
            [summary.started_at],
            [summary.finished_at],
            [summary.api],
            [int(summary.dry_run)],
            [json.dumps(summary.to_dict(), default=str)],
        ],
        ["StartedAt", "FinishedAt", "Api", "DryRun", "Summary"],
    )
