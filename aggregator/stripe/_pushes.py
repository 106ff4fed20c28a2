"""What the invoice push created in Stripe, or set out to: ``stripe_invoice_pushes``.

Contract: a row is written ``pending`` before its request leaves (a draft's new items
in one insert before the first of them); Stripe's answer is a new version (``pushed``
with Stripe's id, ``rejected``, ``unknown``; a batch's answers in one insert after it).
Rows are never deleted: an item of a revision that was re-issued stays ``pushed`` and
gets a ``credit`` row of its own. ``superseded``: a row whose request may have left but
which Stripe, listed afterwards, did not hold, and which the invoice no longer needs
(nothing sent).

Why a table and not the idempotency keys alone: Stripe keeps a key's answer for 24 hours
only, a rerun may come days later (or after ``reprice --force``, which must credit what
was really pushed, not what would be pushed now); the table outlives both, and a row of
unknown outcome is settled by listing Stripe's items (``metadata.meterline_key``)
before anything is sent again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from meterline.aggregator.stripe._ledger import _version
from meterline.store import Store
from meterline.store.stripe_schema import INVOICE_PUSH_COLUMNS

__all__ = [
    "PENDING",
    "PUSHED",
    "REJECTED",
    "SUPERSEDED",
    "UNKNOWN",
    "PushRow",
    "Pushes",
    "consumer_tag",
]

PENDING = "pending"
PUSHED = "pushed"
REJECTED = "rejected"
UNKNOWN = "unknown"
SUPERSEDED = "superseded"


def consumer_tag(consumer: str) -> str:
    """A short, key-safe stand-in for a consumer id (any characters, any length)."""
    return hashlib.sha256(consumer.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PushRow:
    """One draft invoice or invoice item of one consumer's invoice of one period."""

    period: str
    consumer: str
    key: str
    """``r<rev>/line/<n>``, ``r<rev>/markup``, ``r<rev>/adj/<µs>``, ``credit/<key>``,
    ``draft/<customer>/<n>``: unique within (period, consumer)."""
    kind: str
    """``draft``, ``line``, ``markup``, ``adjustment`` or ``credit``."""
    revision: int
    customer: str
    currency: str
    """Lower case, as Stripe writes it."""
    amount: int
    """Stripe's minor units (drafts: 0)."""
    description: str
    stripe_invoice: str = ""
    """The draft invoice the item goes on (``in_…``)."""
    stripe_id: str = ""
    """What Stripe created (``ii_…``, drafts ``in_…``), once known."""
    attempt: int = 0
    state: str = PENDING
    answer: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def meterline_key(self) -> str:
        """What the Stripe object carries as ``metadata.meterline_key``."""
        return f"{self.period}/{consumer_tag(self.consumer)}/{self.key}"

    @property
    def idempotency_key(self) -> str:
        """The idempotency key's stem: invoice (period, consumer), revision, line, attempt
        (the client adds ``-g0``); ≤ 255 characters."""
        return f"ml-inv-{self.meterline_key}-a{self.attempt}"

    @property
    def unresolved(self) -> bool:
        return self.state in (PENDING, UNKNOWN)

    def moved(self, state: str, answer: str = "", stripe_id: str = "") -> PushRow:
        return replace(
            self,
            state=state,
            answer=answer[:2000],
            stripe_id=stripe_id or self.stripe_id,
            updated_at=datetime.now(UTC),
        )


class Pushes:
    """Reads and writes ``stripe_invoice_pushes``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def of_period(self, period: str) -> dict[str, dict[str, PushRow]]:
        """consumer → key → the row's latest version, for one period."""
        _, rows = self.store.query(
            f"SELECT {', '.join(INVOICE_PUSH_COLUMNS[:-1])} FROM {{db}}.stripe_invoice_pushes "
            "FINAL WHERE Period = {period:String} ORDER BY ConsumerId, CreatedAt, Key",
            {"period": period},
        )
        out: dict[str, dict[str, PushRow]] = {}
        for row in rows:
            r = _row(row)
            out.setdefault(r.consumer, {})[r.key] = r
        return out

    def write(self, rows: Sequence[PushRow]) -> None:
        """Record ``rows`` (new ones or new states) in one insert."""
        if not rows:
            return
        columns: list[list[object]] = [[] for _ in INVOICE_PUSH_COLUMNS]
        for r in rows:
            values = (r.period, r.consumer, r.key, r.kind, r.revision, r.customer, r.currency,
                      r.amount, r.description, r.stripe_invoice, r.stripe_id, r.attempt,
                      r.state, r.answer, r.created_at, r.updated_at, _version())  # fmt: skip
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        self.store.insert_columns("stripe_invoice_pushes", columns, INVOICE_PUSH_COLUMNS)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row(row: Sequence[object]) -> PushRow:
    (period, consumer, key, kind, revision, customer, currency, amount, description,
     invoice, stripe_id, attempt, state, answer, created, updated) = row  # fmt: skip
    return PushRow(
        period=str(period),
        consumer=str(consumer),
        key=str(key),
        kind=str(kind),
        revision=int(revision),  # type: ignore[call-overload]
        customer=str(customer),
        currency=str(currency),
        amount=int(amount),  # type: ignore[call-overload]
        description=str(description),
        stripe_invoice=str(invoice),
        stripe_id=str(stripe_id),
        attempt=int(attempt),  # type: ignore[call-overload]
        state=str(state),
        answer=str(answer),
        created_at=_utc(created),  # type: ignore[arg-type]
        updated_at=_utc(updated),  # type: ignore[arg-type]
    )
