"""Rating runs: keep ``rated_usage`` equal to the counted usage × the current prices.

Contract:
- A month of ``llm_usage`` is *current* when its parts' signature (newest block and
  mutation, :data:`~meterline.aggregator.queries.rated.SIGNATURES_SQL`) and the pricing's
  version equal those of its newest completed run (``rated_months``). Late data, a
  duplicate that displaces an earlier report, a month-edge copy, a delete: each makes a
  new block or data version in the month it touches. Merges do not (and change nothing
  counted).
- A run of a month: pass 1 fingerprints each hour's counted responses; the hours whose
  fingerprint or pricing differ from their marker are rated (pass 2, in the engine), then
  marked (``rated_hours``: one insert, one part), then the month is recorded
  (``rated_months``). A run killed at any point leaves every hour with its old rows and
  marker, or its new ones: readers follow the marker. The month stays not current, so
  the next run does it again (idempotent: unchanged hours are not rewritten).
- Rows of replaced runs are deleted after the marker moved (a reader that started
  before still sees its snapshot).

Runs of one store are serialised by a lock in this process. Several processes rating
one ClickHouse server (aggregator replicas) stay correct — each run writes complete
hours under its own run id, and the newest marker wins — but may repeat each other's
work; a run id is the wall clock in ns, so replicas need synchronised clocks.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from meterline.aggregator.pricing import Pricing, Rater
from meterline.aggregator.queries import READ_SETTINGS
from meterline.aggregator.queries import rated as sql
from meterline.aggregator.queries.usage import UsageFilter
from meterline.aggregator.rated._prices import cell_params, config_version, plan_params
from meterline.aggregator.tenancy import Scope
from meterline.store import Store

logger = logging.getLogger(__name__)

_after_step: Callable[[str, int], None] | None = None
"""Crash tests set this to stop a run after a step (``scan``, ``rows``, ``markers``) of a
month."""


def _step(name: str, month: int) -> None:
    if _after_step is not None:
        _after_step(name, month)


_MISSING_CELL = "usage in a price cell the run did not look up"

_locks: weakref.WeakKeyDictionary[Store, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()
_last_run = 0


def _lock(store: Store) -> threading.Lock:
    with _locks_guard:
        lock = _locks.get(store)
        if lock is None:
            lock = _locks[store] = threading.Lock()
        return lock


def _next_run() -> int:
    global _last_run
    with _locks_guard:
        _last_run = max(_last_run + 1, time.time_ns())
        return _last_run


def month_bounds(month: int) -> tuple[datetime, datetime]:
    """``[start, end)`` of a ``YYYYMM`` month (UTC)."""
    year, m = divmod(month, 100)
    start = datetime(year, m, 1, tzinfo=UTC)
    end = datetime(year + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _yyyymm(at: datetime) -> int:
    return at.year * 100 + at.month


@dataclass(frozen=True)
class MonthRun:
    """What one run of one month did."""

    month: int
    run: int
    hours_rated: int
    """Hours whose rows were replaced (0: the month was current already in substance)."""
    seconds: float


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _signatures(store: Store) -> dict[int, str]:
    _, rows = store.query(sql.SIGNATURES_SQL, {"database": store.database})
    return {int(m): str(s) for m, s in rows}


def _rated_months(store: Store) -> dict[int, tuple[str, str]]:
    _, rows = store.query(sql.MONTHS_SQL)
    return {int(r[0]): (str(r[2]), str(r[3])) for r in rows}


def stale_months(
    store: Store, pricing: Pricing, start: datetime | None = None, end: datetime | None = None
) -> list[tuple[int, str]]:
    """Months (``YYYYMM``, current signature) in ``[start, end)`` whose rated usage is not
    current: usage changed since their last run, or the pricing did."""
    version = config_version(pricing)
    signatures = _signatures(store)
    rated = _rated_months(store)
    lo = _yyyymm(start) if start is not None else 0
    hi = _yyyymm(end - _TICK) if end is not None else 999999
    stale = []
    for month in sorted(set(signatures) | set(rated)):
        if not lo <= month <= hi:
            continue
        signature = signatures.get(month, "")
        if rated.get(month, ("", "")) != (signature, version) and (signature or month in rated):
            stale.append((month, signature))
    return stale


_TICK = timedelta(microseconds=1)
"""The last instant before ``end`` (datetimes have microseconds)."""


def _scan(
    store: Store, pricing: Pricing, f: UsageFilter
) -> tuple[Any, dict[datetime, tuple[int, int]], list[tuple[Any, datetime]]]:
    """Pass 1 with a grid that covers every model present (at most one retry)."""
    book = pricing.book
    for attempt in range(2):
        grid = book.grid(book.seen)
        query, params = sql.scan_sql(f, grid)
        names, rows = store.query(query, params, settings=READ_SETTINGS)
        hours: dict[datetime, tuple[int, int]] = {}
        cells: list[tuple[Any, datetime]] = []
        for row in rows:
            r = dict(zip(names, row, strict=True))
            if r["by_cell"]:
                key = (
                    str(r["provider"]),
                    str(r["response_model"]),
                    str(r["request_model"]),
                    int(r["segment"]),
                    int(r["tod"]),
                    int(r["tier"]),
                )
                cells.append((key, _utc(r["first_at"])))
            else:
                hours[_utc(r["hour"])] = (int(r["responses"]), int(r["fingerprint"]))
        present = {k[:3] for k, _ in cells}
        if present <= book.seen:
            return grid, hours, cells
        book.remember(present)
        if attempt == 0 and not grid.covers(book.grid(present), f.start, f.end):
            continue
        return grid, hours, cells
    return grid, hours, cells


def _roll_up_days(store: Store, run: int, start: datetime, end: datetime, now: datetime) -> None:
    """Rebuild the daily sums of days one of whose hours has a newer run than they were
    built from (this run's hours, or those of a run killed before it got here)."""
    _, rows = store.query(sql.DAYS_SQL, {"start": start, "end": end})
    stale = sorted((day, int(newest)) for day, newest, built in rows if built != newest)
    if not stale:
        return
    days = [d for d, _ in stale]
    store.command(sql.DAILY_SQL, {"run": run, "days": days, "start": start, "end": end})
    store.insert_columns(
        "rated_days",
        [days, [run] * len(days), [h for _, h in stale], [now] * len(days)],
        sql.DAYS_COLUMNS,
    )
    store.command(sql.DAILY_CLEANUP_SQL, {"days": days, "run": run})


def rate_month(store: Store, pricing: Pricing, month: int, signature: str) -> MonthRun:
    """One run of ``month`` (``YYYYMM``); call with the store's rating lock held."""
    started = time.perf_counter()
    run = _next_run()
    version = config_version(pricing)
    start, end = month_bounds(month)
    f = UsageFilter(start=start, end=end, scope=Scope.ALL)  # the table rates everyone
    grid, hours, cells = _scan(store, pricing, f)
    _step("scan", month)
    _, marked = store.query(sql.HOURS_SQL, {"start": start, "end": end})
    current = {_utc(r[0]): (int(r[2]), int(r[3]), str(r[4])) for r in marked}
    changed = sorted(
        h
        for h in set(hours) | set(current)
        if current.get(h) != (*hours.get(h, (0, 0)), version) and (h in hours or current[h][0] > 0)
    )
    now = datetime.now(UTC)
    if changed:
        params = {
            "run": run,
            "config_version": version,
            "rated_at": now,
            **plan_params(pricing),
            **cell_params(Rater(pricing.book, grid), cells),
        }
        query, all_params = sql.insert_sql(f, grid, hours=changed, params=params)
        store.command(query, all_params)
        _step("rows", month)
        responses = [hours.get(h, (0, 0)) for h in changed]
        store.insert_columns(
            "rated_hours",
            [
                changed,
                [run] * len(changed),
                [r[0] for r in responses],
                [r[1] for r in responses],
                [version] * len(changed),
                [now] * len(changed),
            ],
            sql.HOURS_COLUMNS,
        )
        _step("markers", month)
        store.command(sql.CLEANUP_SQL, {"hours": changed, "run": run})
    _roll_up_days(store, run, start, end, now)
    _step("days", month)
    seconds = time.perf_counter() - started
    store.insert_columns(
        "rated_months",
        [[month], [run], [signature], [version], [now], [seconds], [len(changed)]],
        sql.MONTHS_COLUMNS,
    )
    logger.info(
        "rated %d: %d hour(s) replaced in %.3f s (run %d)", month, len(changed), seconds, run
    )
    return MonthRun(month, run, len(changed), seconds)


def ensure_rated(
    store: Store, pricing: Pricing, start: datetime | None = None, end: datetime | None = None
) -> list[MonthRun]:
    """Rate every month of ``[start, end)`` that is not current, now (readers call this
    first, so what they read is never staler than their own call)."""
    if not stale_months(store, pricing, start, end):
        return []
    with _lock(store):
        return [
            _rate_with_retry(store, pricing, month, signature)
            for month, signature in stale_months(store, pricing, start, end)
        ]


def _rate_with_retry(store: Store, pricing: Pricing, month: int, signature: str) -> MonthRun:
    """A run fails, leaving no marker, when usage of a price cell its scan had not seen
    arrives before its insert (a new model or tier): scan again, at most twice more."""
    for attempt in range(3):
        try:
            return rate_month(store, pricing, month, signature)
        except Exception as exc:
            if attempt == 2 or _MISSING_CELL not in str(exc):
                raise
            logger.info("rating %d again: usage arrived in a new price cell", month)
    raise AssertionError("unreachable")
