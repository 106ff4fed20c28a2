"""The sync's ledger: every meter event meterline sent or means to send, in the store.

Contract (table ``stripe_ledger``, :mod:`meterline.store.stripe_schema`):
- A row is written ``pending`` before its request leaves; the answer (or its absence)
  is a new version of the row. A run killed at any point leaves rows ``pending``: the
  next run re-sends them with the same identifier and idempotency key while Stripe still
  de-duplicates (:data:`RESEND_WITHIN` of the row's creation, which precedes Stripe's
  receipt), and otherwise reports them (``reported``) and sends nothing more for that
  window until someone reconciles it by hand.
- Identifiers are deterministic: ``ml-<sha256(consumer, meter, window start, window
  length)[:32]>-<seq>`` (≤ 100 characters, as Stripe requires).
- What Stripe holds for a window = the ``accepted`` values (events, corrections and the
  negative values of accepted cancellations); what meterline has accounted for adds the
  ``reported`` credits and expired deltas (told to a person, never re-sent).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from meterline.store import Store
from meterline.store.stripe_schema import LEDGER_COLUMNS

__all__ = [
    "ACCEPTED",
    "PENDING",
    "REJECTED",
    "REPORTED",
    "RESEND_WITHIN",
    "SENT_UNKNOWN",
    "Ledger",
    "LedgerRow",
    "Slot",
    "identifier",
]

PENDING = "pending"
SENT_UNKNOWN = "sent-unknown"
ACCEPTED = "accepted"
REJECTED = "rejected"
REPORTED = "reported"

RESEND_WITHIN = timedelta(hours=23)
"""A row of unknown outcome is re-sent only this soon after it was written: Stripe
de-duplicates identifiers for 24 h of its receipt; the hour left covers clock skew."""

Slot = tuple[str, str, datetime]
"""(consumer, event name, window start)."""

_version_lock = threading.Lock()
_last_version = 0


def _version() -> int:
    return _versions(1).start


def _versions(count: int) -> range:
    """``count`` increasing versions, above every one handed out before (one lock)."""
    global _last_version
    with _version_lock:
        first = max(_last_version + 1, time.time_ns())
        _last_version = first + count - 1
        return range(first, first + count)


def identifier(consumer: str, event_name: str, start: datetime, seconds: int, seq: int) -> str:
    """The deterministic meter event identifier of one ledger row."""
    key = f"{consumer}\x00{event_name}\x00{start.astimezone(UTC).isoformat()}\x00{seconds}"
    return f"ml-{hashlib.sha256(key.encode()).hexdigest()[:32]}-{seq}"


@dataclass(frozen=True)
class LedgerRow:
    """One event, correction, cancellation or reported delta of one window."""

    consumer: str
    event_name: str
    window_start: datetime
    window_seconds: int
    seq: int
    kind: str
    """``event``, ``correction``, ``cancel``, ``credit`` (negative, too late to cancel)
    or ``expired`` (a delta of a window older than Stripe accepts)."""
    identifier: str
    customer: str
    value: int
    """What the row adds to the window in Stripe once accepted (cancel: negative)."""
    state: str
    api: str = "v1"
    target: str = ""
    """``cancel``: the identifier of the event it cancels."""
    answer: str = ""
    """Stripe's answer (JSON or the error), or why the row was reported."""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def slot(self) -> Slot:
        return (self.consumer, self.event_name, self.window_start)

    @property
    def unresolved(self) -> bool:
        return self.state in (PENDING, SENT_UNKNOWN)

    def moved(self, state: str, answer: str = "", at: datetime | None = None) -> LedgerRow:
        """This row in a new state (a new version when written), updated ``at`` (now).

        Built directly: ``dataclasses.replace`` took ~3x as long, per event of a run."""
        return LedgerRow(
            consumer=self.consumer,
            event_name=self.event_name,
            window_start=self.window_start,
            window_seconds=self.window_seconds,
            seq=self.seq,
            kind=self.kind,
            identifier=self.identifier,
            customer=self.customer,
            value=self.value,
            state=state,
            api=self.api,
            target=self.target,
            answer=answer,
            created_at=self.created_at,
            updated_at=at or datetime.now(UTC),
        )


def held_by_stripe(rows: Iterable[LedgerRow]) -> int:
    """The window's total in Stripe by the ledger: accepted values, cancellations netted."""
    return sum(r.value for r in rows if r.state == ACCEPTED)


def accounted(rows: Iterable[LedgerRow]) -> int:
    """What meterline has dealt with: accepted values plus reported credits and expiries."""
    return sum(
        r.value
        for r in rows
        if r.state == ACCEPTED or (r.state == REPORTED and r.kind in ("credit", "expired"))
    )


class Ledger:
    """Reads and writes ``stripe_ledger``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def slots(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> dict[Slot, list[LedgerRow]]:
        """Every row whose window starts in ``[start, end)``, per slot, in ``seq`` order."""
        where, params = [], {}
        if start is not None:
            where.append("WindowStart >= {start:DateTime64(0, 'UTC')}")
            params["start"] = start
        if end is not None:
            where.append("WindowStart < {end:DateTime64(0, 'UTC')}")
            params["end"] = end
        sql = (
            f"SELECT {', '.join(LEDGER_COLUMNS[:-1])} FROM {{db}}.stripe_ledger FINAL"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY ConsumerId, EventName, WindowStart, Seq"
        )
        _, rows = self.store.query(sql, params)
        out: dict[Slot, list[LedgerRow]] = {}
        for row in rows:
            r = _row(row)
            out.setdefault(r.slot, []).append(r)
        return out

    def write(self, rows: Sequence[LedgerRow]) -> None:
        """Record ``rows`` (new rows, or new states of existing ones) in one insert.

        One insert costs the embedded store ~7 ms of CPU whatever its size (a new part):
        callers batch rows (the sync writes a chunk's answers with the next chunk's new
        rows); the columns are built column by column for the same reason.
        """
        if not rows:
            return
        columns: list[list[object]] = [
            [r.consumer for r in rows],
            [r.event_name for r in rows],
            [r.window_start for r in rows],
            [r.window_seconds for r in rows],
            [r.seq for r in rows],
            [r.kind for r in rows],
            [r.identifier for r in rows],
            [r.customer for r in rows],
            [r.value for r in rows],
            [r.target for r in rows],
            [r.state for r in rows],
            [r.api for r in rows],
            [r.answer for r in rows],
            [r.created_at for r in rows],
            [r.updated_at for r in rows],
            list(_versions(len(rows))),
        ]
        self.store.insert_columns("stripe_ledger", columns, LEDGER_COLUMNS)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row(row: Sequence[object]) -> LedgerRow:
    (consumer, event_name, start, seconds, seq, kind, ident, customer, value, target, state,
     api, answer, created, updated) = row  # fmt: skip
    return LedgerRow(
        consumer=str(consumer),
        event_name=str(event_name),
        window_start=_utc(start),  # type: ignore[arg-type]
        window_seconds=int(seconds),  # type: ignore[call-overload]
        seq=int(seq),  # type: ignore[call-overload]
        kind=str(kind),
        identifier=str(ident),
        customer=str(customer),
        value=int(value),  # type: ignore[call-overload]
        target=str(target),
        state=str(state),
        api=str(api),
        answer=str(answer),
        created_at=_utc(created),  # type: ignore[arg-type]
        updated_at=_utc(updated),  # type: ignore[arg-type]
    )
