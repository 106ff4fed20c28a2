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
  marked (``rated_hours``: one insert, one part), the days and then the month whose hours
  moved are summed again (``rated_daily``, ``rated_monthly``, each marked the same way),
  then the month is recorded (``rated_months``). A run killed at any point leaves every
  hour with its old rows and marker, or its new ones: readers follow the marker. The
  month stays not current, so the next run does it again (idempotent: unchanged hours
  are not rewritten).
- A run of a month rated before under the same pricing (incremental) reads only what the
  rows inserted since can change: responses new to the month are rated alone and their
  rows added to their hours (a *delta*: the hour's marker then names several runs,
  ``Runs``); the hours of other changed responses are rated whole.
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
"""Crash tests set this to stop a run after a step (``scan``, ``rows``, ``markers``,
``days``, ``month rows``, ``month``) of a month."""


def _step(name: str, month: int) -> None:
    if _after_step is not None:
        _after_step(name, month)


_RETRIED = (
    "usage in a price cell the run did not look up",
    "another run rated these responses already",
)
"""Failures of a run that a new run (scanning again) resolves."""

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
    incremental: bool = False
    """Only the hours the rows inserted since the last run can change were read."""
    hours_added: int = 0
    """Hours the responses new to the month were added to (their rows alone: a delta)."""
    responses_added: int = 0
    """Responses new to the month rated as deltas."""


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _signatures(store: Store) -> dict[int, str]:
    """Per month of ``llm_usage``: ``v2:<newest block>:<newest mutation>:<oldest block>``."""
    database = {"database": store.database}
    _, [(mutation,)] = store.query(sql.MUTATIONS_SQL, database)
    _, rows = store.query(sql.SIGNATURES_SQL, database)
    return {int(m): f"v2:{int(b)}:{int(mutation or 0)}:{int(first)}" for m, b, first in rows}


def _parse(signature: str) -> tuple[int, tuple[int, int]] | None:
    """(newest block, (newest mutation, oldest block)) of a ``v2`` signature; ``None`` for
    others (runs of an earlier release: rated again in full)."""
    parts = signature.split(":")
    if len(parts) != 4 or parts[0] != "v2":
        return None
    return int(parts[1]), (int(parts[2]), int(parts[3]))


def _rated_months(store: Store) -> dict[int, tuple[str, str]]:
    _, rows = store.query(sql.MONTHS_SQL)
    return {int(r[0]): (str(r[2]), str(r[3])) for r in rows}


def stale_months(
    store: Store, pricing: Pricing, start: datetime | None = None, end: datetime | None = None
) -> list[tuple[int, str]]:
    """Months (``YYYYMM``, current signature) in ``[start, end)`` whose rated usage is not
    current: usage changed since their last run, or the pricing did."""
    return [(m, s) for m, s, _ in _stale(store, pricing, start, end)]


def _stale(
    store: Store, pricing: Pricing, start: datetime | None, end: datetime | None
) -> list[tuple[int, str, str | None]]:
    """Stale months with their current signature and the signature of their last
    completed run under the same pricing (``None``: none — a full run)."""
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
        last = rated.get(month, ("", ""))
        if last != (signature, version) and (signature or month in rated):
            previous = last[0] if last[1] == version and last[0] and signature else None
            stale.append((month, signature, previous))
    return stale


_TICK = timedelta(microseconds=1)
"""The last instant before ``end`` (datetimes have microseconds)."""


def _scan(
    store: Store,
    pricing: Pricing,
    f: UsageFilter,
    hours: list[datetime] | None = None,
    *,
    keys: list[tuple[str, str]] | None = None,
    cells_only: bool = False,
) -> tuple[Any, dict[datetime, tuple[int, int]], list[tuple[Any, datetime]]]:
    """Pass 1 with a grid that covers every model present (at most one retry)."""
    book = pricing.book
    for attempt in range(2):
        grid = book.grid(book.seen)
        query, params = sql.scan_sql(f, grid, hours=hours, keys=keys, cells_only=cells_only)
        names, rows = store.query(query, params, settings=READ_SETTINGS)
        found: dict[datetime, tuple[int, int]] = {}
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
                found[_utc(r["hour"])] = (int(r["responses"]), int(r["fingerprint"]))
        present = {k[:3] for k, _ in cells}
        if present <= book.seen:
            return grid, found, cells
        book.remember(present)
        if attempt == 0 and not grid.covers(book.grid(present), f.start, f.end):
            continue
        return grid, found, cells
    return grid, found, cells


def _affected_hours(
    store: Store, month: int, block: int, start: datetime, end: datetime
) -> list[datetime]:
    """The hours of ``month`` that its rows newer than ``block`` can change."""
    _, parts = store.query(
        sql.NEW_PARTS_SQL,
        {"database": store.database, "partition": str(month), "block": block},
    )
    if not parts:
        return []
    params = {
        "month": month,
        "parts": [str(p[0]) for p in parts],
        "block": block,
        "start": start,
        "end": end,
    }
    _, rows = store.query(sql.AFFECTED_HOURS_SQL, params, settings=READ_SETTINGS)
    return sorted(h for h in (_utc(r[0]) for r in rows) if start <= h < end)


MAX_DELTA_KEYS = 200_000
"""A run adds at most this many new responses as deltas (more: it rates their hours whole,
as a run of a large batch of fresh usage costs about the same either way)."""

MAX_RUNS = 16
"""An hour whose marker names this many runs is rated whole by the next run that adds to it
(readers join every run an hour names)."""


def _plan_incremental(
    store: Store, month: int, block: int, start: datetime, end: datetime
) -> tuple[list[datetime], list[tuple[str, str]]]:
    """What the rows of ``month`` newer than ``block`` change: the hours to rate whole,
    and the responses new to the month (no older report, in no marker) whose rows are
    added to their hours as a delta (outside those hours)."""
    _, parts = store.query(
        sql.NEW_PARTS_SQL,
        {"database": store.database, "partition": str(month), "block": block},
    )
    if not parts:
        return [], []
    params = {
        "month": month,
        "parts": [str(p[0]) for p in parts],
        "block": block,
        "start": start,
        "end": end,
        "limit": MAX_DELTA_KEYS + 1,
    }
    _, rows = store.query(sql.FRESH_KEYS_SQL, params, settings=READ_SETTINGS)
    if len(rows) > MAX_DELTA_KEYS:
        return _affected_hours(store, month, block, start, end), []
    new = [(str(c), str(k)) for c, k, old, counted in rows if not old and not counted]
    seen = [(str(c), str(k)) for c, k, old, counted in rows if old or counted]
    hours: set[datetime] = set()
    common = {"month": month, "start": start, "end": end}
    if seen:
        _, found = store.query(
            sql.AFFECTED_BY_KEYS_SQL, {**common, "keys": seen}, settings=READ_SETTINGS
        )
        hours.update(_utc(r[0]) for r in found)
    if new:
        _, crowded = store.query(
            sql.CROWDED_HOURS_SQL, {**common, "keys": new, "max_runs": MAX_RUNS}
        )
        hours.update(_utc(r[0]) for r in crowded)
    return sorted(h for h in hours if start <= h < end), new


def _partly_priced(cell_prices: dict[str, Any]) -> bool:
    """Whether a cell is matched but lacks a price for some token type: then whether its
    calls are unpriced depends on the whole hour's group (docs/rated-usage.md), so its
    responses cannot be added as a delta."""
    return any(
        matched and "" in texts
        for matched, texts in zip(
            cell_prices["cell_matched"], cell_prices["cell_text"], strict=True
        )
    )


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


def _roll_up_months(store: Store, run: int, start: datetime, end: datetime, now: datetime) -> int:
    """Rebuild the monthly sums of the months of ``[start, end)`` one of whose days has a
    newer run than they were built from; return how many were rebuilt."""
    _, rows = store.query(sql.MONTHLY_STATE_SQL, {"start": start, "end": end})
    stale = sorted((int(m), int(newest)) for m, newest, built in rows if built != newest)
    for month, newest in stale:
        lo, hi = month_bounds(month)
        store.command(sql.MONTHLY_SQL, {"month": month, "run": run, "start": lo, "end": hi})
        _step("month rows", month)
        store.insert_columns(
            "rated_monthly_marks", [[month], [run], [newest], [now]], sql.MONTHLY_MARKS_COLUMNS
        )
        store.command(sql.MONTHLY_CLEANUP_SQL, {"month": month, "run": run})
    return len(stale)


def rate_month(
    store: Store,
    pricing: Pricing,
    month: int,
    signature: str,
    previous: str | None = None,
) -> MonthRun:
    """One run of ``month`` (``YYYYMM``) up to its usage ``signature``; call with the
    store's rating lock held. ``previous``: the signature of its last completed run with
    the same pricing — then only the hours the rows inserted since can change are read
    and rated (incremental); otherwise every hour whose counted usage or pricing differs
    from its marker (full)."""
    started = time.perf_counter()
    run = _next_run()
    version = config_version(pricing)
    start, end = month_bounds(month)
    f = UsageFilter(start=start, end=end, scope=Scope.ALL)  # the table rates everyone
    now_sig, old_sig = _parse(signature), _parse(previous) if previous else None
    incremental = now_sig is not None and old_sig is not None and now_sig[1] == old_sig[1]
    keys: list[tuple[str, str]] = []
    cells_only = False
    if incremental:
        assert old_sig is not None
        changed, keys = _plan_incremental(store, month, old_sig[0], start, end)
        grid, cells = None, []
        if changed or keys:
            grid, _, cells = _scan(store, pricing, f, changed, keys=keys or None)
            if keys and _partly_priced(cell_params(Rater(pricing.book, grid), cells)):
                changed = _affected_hours(store, month, old_sig[0], start, end)
                keys = []
                grid, _, cells = _scan(store, pricing, f, changed)
        _step("scan", month)
    else:
        _, marked = store.query(sql.HOURS_SQL, {"start": start, "end": end})
        current = {_utc(r[0]): (int(r[2]), int(r[3]), str(r[4])) for r in marked}
        # no hour rated under this pricing (the first run, a price change): every hour
        # is rated; the month is read FINAL once, by the insert
        cells_only = not any(v[2] == version for v in current.values())
        grid, hours, cells = _scan(store, pricing, f, cells_only=cells_only)
        _step("scan", month)
        changed = sorted(
            h
            for h in set(hours) | set(current)
            if current.get(h) != (*hours.get(h, (0, 0)), version)
            and (h in hours or current[h][0] > 0)
        )
    now = datetime.now(UTC)
    delta: list[datetime] = []
    if changed or keys or cells_only:
        params = {
            "run": run,
            "config_version": version,
            "rated_at": now,
            **plan_params(pricing),
            **cell_params(Rater(pricing.book, grid), cells),
        }
        query, all_params = sql.insert_sql(
            f, grid, hours=None if cells_only else changed, params=params, keys=keys or None
        )
        store.command(query, all_params)
        _step("rows", month)
        _, written = store.query(sql.RUN_HOURS_SQL, {"run": run, "start": start, "end": end})
        ran = {_utc(r[0]) for r in written}
        if cells_only:
            changed = sorted(ran | {h for h, v in current.items() if v[0] > 0})
        delta = sorted(ran - set(changed))
        store.command(
            sql.MARKERS_SQL,
            {
                "run": run,
                "hours": changed,
                "delta_hours": delta,
                "config_version": version,
                "rated_at": now,
            },
        )
        _step("markers", month)
        if changed:
            store.command(sql.CLEANUP_SQL, {"hours": changed, "run": run})
    _roll_up_days(store, run, start, end, now)
    _step("days", month)
    _roll_up_months(store, run, start, end, now)
    _step("month", month)
    seconds = time.perf_counter() - started
    store.insert_columns(
        "rated_months",
        [[month], [run], [signature], [version], [now], [seconds], [len(changed) + len(delta)]],
        sql.MONTHS_COLUMNS,
    )
    logger.info(
        "rated %d (%s): %d hour(s) replaced, %d added to in %.3f s (run %d)",
        month,
        "incremental" if incremental else "full",
        len(changed),
        len(delta),
        seconds,
        run,
    )
    return MonthRun(month, run, len(changed), seconds, incremental, len(delta), len(keys))


def ensure_rated(
    store: Store, pricing: Pricing, start: datetime | None = None, end: datetime | None = None
) -> list[MonthRun]:
    """Rate every month of ``[start, end)`` that is not current, now (readers call this
    first, so what they read is never staler than their own call)."""
    if not stale_months(store, pricing, start, end):
        return []
    with _lock(store):
        return [
            _rate_with_retry(store, pricing, month, signature, previous)
            for month, signature, previous in _stale(store, pricing, start, end)
        ]


def roll_up_months(store: Store, start: datetime | None = None, end: datetime | None = None) -> int:
    """Build the monthly sums of current months that lack them (months rated before the
    monthly roll-up existed; a run builds its own month's); return how many were built.
    The loop calls it; until then invoices of those months read the daily sums."""
    lo = start or datetime(1900, 1, 1, tzinfo=UTC)
    hi = end or datetime(2299, 12, 1, tzinfo=UTC)
    with _lock(store):
        return _roll_up_months(store, _next_run(), lo, hi, datetime.now(UTC))


def _rate_with_retry(
    store: Store, pricing: Pricing, month: int, signature: str, previous: str | None
) -> MonthRun:
    """A run fails, leaving no marker, when usage of a price cell its scan had not seen
    arrives before its insert (a new model or tier): scan again, at most twice more."""
    for attempt in range(3):
        try:
            return rate_month(store, pricing, month, signature, previous)
        except Exception as exc:
            if attempt == 2 or not any(m in str(exc) for m in _RETRIED):
                raise
            logger.info("rating %d again: usage arrived in a new price cell", month)
    raise AssertionError("unreachable")
