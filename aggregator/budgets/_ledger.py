"""Reservations: the atomic check-and-reserve of the embedded deployment.

Contract:
- One lock per process guards the check and the insert: for each budget that applies,
  ``spent + reserved + amount <= limit`` is checked and the reservation added under that
  lock, so concurrent reserves (threads of the API server, requests from any number of
  app processes) never pass a hard limit together.
- ``spent`` comes from a per-consumer *snapshot* of the store (the invoice figures and
  which reservations' spans are stored), refreshed at most every ``snapshot_seconds``
  outside the lock. A reservation counts (its worst case while live, its actual amount
  once settled) until the snapshot shows its span stored; then its usage is in ``spent``
  and the reservation is dropped, in the same step, so it is never counted twice nor
  missed. The ids are read *before* the spend, so a span landing in between is counted
  twice for one snapshot (too cautious), never not at all.
- Unsettled reservations expire after their ``ttl`` (bounded); settled ones whose span
  never arrives are dropped after ``settled_keep`` (the invoice does not have them either).
- Every state is written to ``budget_reservations`` before the answer (concurrent writes
  grouped into one insert: :meth:`Ledger.persist`); at start the live ones are reloaded.

This lock is one process's: several aggregator replicas share the state through Redis
instead (:mod:`._redis`, one Lua script per check-and-reserve; docs/budgets.md).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from meterline.aggregator.budgets._model import Budget
from meterline.aggregator.budgets._rates import LONGEST, Entry, RateCheck, window_use
from meterline.aggregator.budgets._tables import (
    RESERVATION_COLUMNS,
    SELECT_LIVE_RESERVATIONS,
    SELECT_RECENT_RESERVATIONS,
    SELECT_RESERVATION,
    STORED_IDS,
)
from meterline.aggregator.queries import READ_SETTINGS
from meterline.errors import MeterlineError
from meterline.store import Store

logger = logging.getLogger(__name__)


class LedgerUnavailable(MeterlineError):
    """The shared reservation store cannot be reached (the API answers 503)."""


Status = Literal["reserved", "settled", "released", "expired", "counted"]


@dataclass(frozen=True)
class Reservation:
    """One call's claim on the budgets that apply to it."""

    id: str
    consumer: str
    feature: str | None
    provider: str
    model: str
    money: Decimal | None
    """Worst case while reserved, the actual amount once settled (markup included);
    ``None`` when unpriced (only possible for calls under soft or token budgets)."""
    tokens: int
    status: Status
    created_at: datetime
    expires_at: datetime
    version: int = 1

    def amount(self, budget: Budget) -> Decimal:
        if budget.in_tokens:
            return Decimal(self.tokens)
        return self.money if self.money is not None else Decimal(0)


@dataclass
class Snapshot:
    """A consumer's figures read from the store at one moment."""

    taken: float
    """``time.monotonic()`` when the read started."""
    spent: dict[tuple[str, str, str, datetime], Decimal]
    """Budget key + period start → spent."""
    taken_us: int = 0
    """Redis's clock when the read started (shared ledger only)."""


@dataclass(frozen=True)
class Check:
    """One budget a reserve is checked against (or whose totals are read)."""

    budget: Budget
    start: datetime
    end: datetime
    room: Decimal | None
    """``limit - spent`` for a hard budget; ``None``: not enforced (soft)."""
    amount: Decimal
    """The candidate's amount in the budget's unit."""


@dataclass(frozen=True)
class Totals:
    """What a ledger holds against each checked budget."""

    blocking: int | None
    """Index of the first check that did not fit (nothing was added), else ``None``."""
    used: list[Decimal]
    """Live reservations per check (the candidate included when added)."""
    settled: list[Decimal]
    """The settled part of ``used`` (spent, not yet stored)."""
    rate_blocking: int | None = None
    """Index of the first rate check that did not fit (nothing was added)."""
    retry_after: float | None = None
    """Seconds until the refused call would fit that rate limit (``None``: never)."""
    rate_used: tuple[Decimal, ...] = ()
    """What each rate check's window held before the candidate (up to the blocking one)."""


def new_id() -> str:
    return "rsv_" + secrets.token_urlsafe(18)


def _row(r: Reservation, now: datetime) -> list[Any]:
    return [
        r.id, r.version, r.status, r.consumer, r.feature or "", int(r.feature is not None),
        r.provider, r.model, None if r.money is None else format(r.money, "f"), r.tokens,
        r.created_at, r.expires_at, now,
    ]  # fmt: skip


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Ledger:
    """The live reservations of this process, their lock, and the consumers' snapshots."""

    def __init__(
        self,
        store: Store,
        *,
        snapshot_seconds: float = 1.0,
        settled_keep: timedelta = timedelta(days=1),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.snapshot_seconds = snapshot_seconds
        self.settled_keep = settled_keep
        self.clock = clock
        self.lock = threading.Lock()
        """Held around every check-and-reserve and state change."""
        self._live: dict[str, dict[str, Reservation]] = {}
        """consumer → id → reservation (reserved or settled, not yet counted)."""
        self._ended: dict[str, tuple[Status, str]] = {}
        """Ids that ended in this process (released, expired, counted): settle is a no-op."""
        self._rates: dict[str, dict[str, Reservation]] = {}
        """consumer → id → reservation of the last hour under a rate limit (any status but
        released): the sliding windows (:mod:`._rates`)."""
        self._snapshots: dict[str, Snapshot] = {}
        self._refreshing: dict[str, threading.Lock] = {}
        self._commit = threading.Condition()
        """Group commit of :meth:`persist`: rows waiting, inserts started / written."""
        self._rows: list[list[Any]] = []
        self._started = self._written = 0
        self._writing = False
        self._errors: dict[int, Exception] = {}
        self._load()

    # --- persistence ------------------------------------------------------------------

    def _load(self) -> None:
        _, rows = self.store.query(SELECT_LIVE_RESERVATIONS, settings=READ_SETTINGS)
        for r in map(self._reservation, rows):
            self._live.setdefault(r.consumer, {})[r.id] = r
        if rows:
            logger.info("budgets: %d live reservations reloaded", len(rows))
        # the rate windows: every reservation of the last hour the call may have used
        since = self.clock() - LONGEST
        _, recent = self.store.query(
            SELECT_RECENT_RESERVATIONS, {"since": since}, settings=READ_SETTINGS
        )
        for r in map(self._reservation, recent):
            self._rates.setdefault(r.consumer, {})[r.id] = r

    @staticmethod
    def _reservation(row: Any) -> Reservation:
        (rid, version, status, consumer, feature, has_feature, provider, model,
         amount, tokens, created, expires, _changed) = row  # fmt: skip
        return Reservation(
            id=str(rid),
            consumer=str(consumer),
            feature=str(feature) if has_feature else None,
            provider=str(provider),
            model=str(model),
            money=None if amount is None else Decimal(amount),
            tokens=int(tokens),
            status=status,
            created_at=_utc(created),
            expires_at=_utc(expires),
            version=int(version),
        )

    def persist(self, reservations: Iterable[Reservation]) -> None:
        """Write these states (call outside :attr:`lock`); returns once they are written.

        Group commit: while one insert runs, the rows of concurrent callers gather and go
        in the next insert together, whose caller writes them for all (each caller still
        returns only after its own rows are written, or raises that insert's error). One
        insert into the embedded store costs ~8 ms whatever its size, so this is what
        lets reserves from many clients go faster than one insert each.
        """
        now = self.clock()
        rows = [_row(r, now) for r in reservations]
        if not rows:
            return
        with self._commit:
            self._rows.extend(rows)
            mine = self._started + 1  # the next insert to start takes these rows
            while self._written < mine:
                if not self._writing:
                    batch, self._rows = self._rows, []
                    self._started += 1
                    self._writing = True
                    break
                self._commit.wait()
            else:
                error = self._errors.get(mine)
                if error is not None:
                    raise error
                return
        error = None
        try:
            columns = [list(c) for c in zip(*batch, strict=True)]
            self.store.insert_columns("budget_reservations", columns, RESERVATION_COLUMNS)
        except Exception as exc:
            error = exc
            raise
        finally:
            with self._commit:
                self._writing = False
                self._written = mine
                if error is not None:
                    self._errors[mine] = error
                    for old in [k for k in self._errors if k < mine - 1000]:
                        del self._errors[old]
                self._commit.notify_all()

    def stored_ids(self, ids: list[str]) -> set[str]:
        """The ids among ``ids`` ever written to the store (read outside :attr:`lock`): a
        lease's call reported before this process started is not reported again."""
        if not ids:
            return set()
        _, rows = self.store.query(STORED_IDS, {"ids": ids}, settings=READ_SETTINGS)
        return {str(r[0]) for r in rows}

    def stored_status(self, rid: str) -> tuple[str, str] | None:
        """(status, consumer) of a reservation as stored."""
        _, rows = self.store.query(SELECT_RESERVATION, {"id": rid}, settings=READ_SETTINGS)
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    # --- state (call with the lock held) -----------------------------------------------

    def live(self, consumer: str) -> list[Reservation]:
        return list(self._live.get(consumer, {}).values())

    def find(self, rid: str) -> Reservation | None:
        for per in self._live.values():
            found = per.get(rid)
            if found is not None:
                return found
        return None

    def ended(self, rid: str) -> tuple[Status, str] | None:
        return self._ended.get(rid)

    def add(self, r: Reservation) -> None:
        self._live.setdefault(r.consumer, {})[r.id] = r

    def update(self, r: Reservation) -> Reservation:
        """Replace ``r``'s state (a new version); ended states leave the live set."""
        updated = replace(r, version=r.version + 1)
        log = self._rates.get(r.consumer)
        if log is not None and r.id in log:
            if updated.status == "released":
                del log[r.id]
            else:
                log[r.id] = updated
        per = self._live.setdefault(r.consumer, {})
        if updated.status in ("reserved", "settled"):
            per[r.id] = updated
        else:
            per.pop(r.id, None)
            self._ended[r.id] = (updated.status, r.consumer)
            if len(self._ended) > 200_000:  # bounded: older ids fall back to the store
                for key in list(self._ended)[:100_000]:
                    del self._ended[key]
        return updated

    def expire(self, consumer: str, now: datetime) -> list[Reservation]:
        """End the consumer's reservations past their expiry (or kept long enough)."""
        ended = []
        for r in self.live(consumer):
            if (r.status == "reserved" and r.expires_at <= now) or (
                r.status == "settled" and r.expires_at + self.settled_keep <= now
            ):
                ended.append(self.update(replace(r, status="expired")))
        return ended

    def used(self, budget: Budget, start: datetime, end: datetime) -> Decimal:
        """What the live reservations take of ``budget`` in the period ``[start, end)``."""
        total = Decimal(0)
        for r in self._live.get(budget.consumer, {}).values():
            if start <= r.created_at < end and budget.applies_to(r.consumer, r.feature):
                total += r.amount(budget)
        return total

    def settled_in(self, budget: Budget, start: datetime, end: datetime) -> Decimal:
        """The part of :meth:`used` that is settled (spent, not yet stored)."""
        total = Decimal(0)
        for r in self._live.get(budget.consumer, {}).values():
            if (
                r.status == "settled"
                and start <= r.created_at < end
                and budget.applies_to(r.consumer, r.feature)
            ):
                total += r.amount(budget)
        return total

    def window_entries(self, consumer: str, now: datetime) -> list[Entry]:
        """The consumer's reservations in the rate windows (older ones are dropped)."""
        log = self._rates.setdefault(consumer, {})
        oldest = now - LONGEST
        for rid in [rid for rid, r in log.items() if r.created_at <= oldest]:
            del log[rid]
        return [Entry(r.created_at, r.provider, r.model, r.tokens, r.money) for r in log.values()]

    def rate_entries(self, consumer: str, now: datetime) -> list[Entry]:
        """:meth:`window_entries` under the lock (for reading a window's state)."""
        with self.lock:
            return self.window_entries(consumer, now)

    def reserve(
        self,
        consumer: str,
        checks: list[Check],
        candidate: Reservation | None,
        rates: list[RateCheck] | None = None,
    ) -> tuple[Totals, list[Reservation]]:
        """Under the lock: end what expired, sum the live reservations of each check and
        add ``candidate`` when it fits every enforced check and every rate limit of
        ``rates`` (sliding windows ending now). Returns the totals and the reservations
        that ended (to persist)."""
        with self.lock:
            now = self.clock()
            ended = self.expire(consumer, now)
            used = [self.used(c.budget, c.start, c.end) for c in checks]
            settled = [self.settled_in(c.budget, c.start, c.end) for c in checks]
            blocking = rate_blocking = retry_after = None
            rate_used: list[Decimal] = []
            if candidate is not None:
                for i, c in enumerate(checks):
                    if c.room is not None and used[i] + c.amount > c.room:
                        blocking = i
                        break
                if blocking is None and rates:
                    # the windows end at the candidate's own instant and count every entry
                    # after their start, later ones included: then no window holds more
                    # than its limit, whatever order concurrent reserves take the lock in
                    at = candidate.created_at
                    entries = self.window_entries(consumer, at)
                    for i, rc in enumerate(rates):
                        in_window, fits, retry = window_use(entries, rc, at)
                        rate_used.append(in_window)
                        if not fits:
                            rate_blocking, retry_after = i, retry
                            break
                if blocking is None and rate_blocking is None:
                    self.add(candidate)
                    if rates:
                        self._rates.setdefault(consumer, {})[candidate.id] = candidate
                    used = [u + c.amount for u, c in zip(used, checks, strict=True)]
        totals = Totals(blocking, used, settled, rate_blocking, retry_after, tuple(rate_used))
        return totals, ended

    def settle(
        self,
        rid: str,
        consumer: str | None,
        price: Callable[[Reservation, str], tuple[Decimal | None, int]],
        model: str | None,
    ) -> tuple[str | None, Reservation | None]:
        """Settle a live ``reserved`` reservation at ``price(r, model)`` (money, tokens) of
        the settled model (``model``, else the reserved one). Returns
        (status afterwards, the new state to persist); status ``None``: not live here."""
        with self.lock:
            r = self.find(rid)
        if r is None or (consumer is not None and r.consumer != consumer):
            return None, None
        if r.status != "reserved":
            return r.status, None
        money, tokens = price(r, model or r.model)
        with self.lock:
            current = self.find(rid)
            if current is None or current.status != "reserved":
                return (current.status if current else None), None
            updated = self.update(
                replace(current, status="settled", money=money, tokens=tokens,
                        model=model or current.model)
            )  # fmt: skip
        return "settled", updated

    def lease(self, rid: str, consumer: str | None) -> Reservation | None:
        """The live lease ``rid`` (``consumer``'s when given)."""
        with self.lock:
            r = self.find(rid)
        return r if r is not None and (consumer is None or r.consumer == consumer) else None

    def report(
        self, lease: Reservation, calls: list[Reservation]
    ) -> tuple[str | None, list[Reservation]]:
        """Add the calls made under ``lease`` as settled reservations and shrink the
        lease by their amounts (not below 0), atomically; a call id already known is
        skipped, also one in the store from before a restart (a call stored, persisted
        before the report answered). Returns (the lease's status, the states to persist)."""
        changed: list[Reservation] = []
        stored = self.stored_ids([c.id for c in calls])
        with self.lock:
            current = self.find(lease.id)
            if current is None or current.status != "reserved":
                return (current.status if current else None), []
            money, tokens = current.money, current.tokens
            for call in calls:
                if (
                    call.id in stored
                    or self.find(call.id) is not None
                    or self.ended(call.id) is not None
                ):
                    continue
                self.add(call)
                changed.append(call)
                if money is not None and call.money is not None:
                    money = max(Decimal(0), money - call.money)
                tokens = max(0, tokens - call.tokens)
            if changed:
                changed.append(self.update(replace(current, money=money, tokens=tokens)))
            return "reserved", changed

    def release(self, rid: str, consumer: str | None) -> tuple[str | None, Reservation | None]:
        """Release a live ``reserved`` reservation (see :meth:`settle` for the answer)."""
        with self.lock:
            r = self.find(rid)
            if r is None or (consumer is not None and r.consumer != consumer):
                return None, None
            if r.status != "reserved":
                return r.status, None
            return "released", self.update(replace(r, status="released"))

    def ended_status(self, rid: str, consumer: str | None) -> str | None:
        """The status of a reservation that is not live here: ended in this process, or
        as stored (an earlier run); ``None`` for an unknown id or another consumer's."""
        with self.lock:
            found = self.ended(rid)
        if found is None:
            found = self.stored_status(rid)
        if found is None or (consumer is not None and found[1] != consumer):
            return None
        if found[0] in ("reserved", "settled"):  # live in the store only: not ours
            return None
        return found[0]

    # --- snapshots --------------------------------------------------------------------

    def snapshot(
        self,
        consumer: str,
        budgets: list[tuple[Budget, datetime, datetime]],
        read_spent: Callable[[Budget, datetime, datetime], Decimal],
        counted: Callable[[list[str], datetime], set[str]],
        *,
        fresh: bool = False,
    ) -> tuple[Snapshot, list[Reservation]]:
        """The consumer's snapshot covering ``budgets``, re-read when older than
        ``snapshot_seconds`` (or missing a budget). Returns it and the reservations it
        found counted (to persist). Call without the lock."""
        keys = [(*b.key, start) for b, start, _ in budgets]
        asked = time.monotonic()
        with self.lock:
            snap = self._snapshots.get(consumer)
            guard = self._refreshing.setdefault(consumer, threading.Lock())
        if not fresh and self._usable(snap, keys, asked - self.snapshot_seconds):
            return snap, []  # type: ignore[return-value]
        with guard:  # one read per consumer at a time; the others use its result
            with self.lock:
                snap = self._snapshots.get(consumer)
            if self._usable(snap, keys, asked):  # read by another thread since we asked
                return snap, []  # type: ignore[return-value]
            taken = time.monotonic()
            with self.lock:
                candidates = self.live(consumer)
            ids = [r.id for r in candidates]
            since = min((r.created_at for r in candidates), default=self.clock())
            stored = counted(ids, since)
            values = {
                key: read_spent(b, s, e) for key, (b, s, e) in zip(keys, budgets, strict=True)
            }
            new = Snapshot(taken, values)
            ended: list[Reservation] = []
            with self.lock:
                for r in candidates:
                    current = self.find(r.id)
                    if r.id in stored and current is not None:
                        ended.append(self.update(replace(current, status="counted")))
                self._snapshots[consumer] = new
            return new, ended

    @staticmethod
    def _usable(snap: Snapshot | None, keys: list[Any], since: float) -> bool:
        """``snap`` was read after ``since`` and covers ``keys``."""
        return snap is not None and snap.taken >= since and all(k in snap.spent for k in keys)

    def forget_snapshot(self, consumer: str) -> None:
        with self.lock:
            self._snapshots.pop(consumer, None)
