"""Rolling windows (``alerts.rolling``): more than ``limit`` billed in ANY window of
``window``, wherever it starts — exact, not aligned on hours.

Definitions (all instants in integer nanoseconds, the store's own precision):

- ``g(t)``: the money billed (plan markup included, exact ``Decimal``, the same pricing
  path as the invoices) for the rule's consumer (and feature) by calls whose instant
  ``c`` is in ``(t − W, t]``. Two calls are in one window exactly when they are less than
  ``W`` apart, so the largest window sum over every start instant is ``max g(c)`` over
  the calls' instants: it is reached at a call.
- The rule is **in breach** at ``t`` while ``g(t) > limit`` (exactly the limit is not
  more). A **rising edge** is the call that takes ``g`` above the limit; an **episode**
  is a maximal stretch of breach, from its rising edge to the instant ``g`` falls back
  (a call leaves the window, at ``c + W``).
- **One alert per episode.** An alert records its edge (``data.crossed_ns``). A check
  finds the episodes of the last :data:`LOOKBACK`; an episode that contains an edge
  already recorded for the rule is known, whatever its own edge now is — late data that
  moves the start of an episode earlier, or joins two episodes, makes no new alert. An
  episode under way at the start of the look-back (its edge older) is not alerted again.

How (cost): ``m[h]``, the money of each UTC hour, comes from ``rated_usage_current``
(one query per rule over ``W`` + the look-back). For the windows ending in hour ``H``
the hours wholly inside every such window give a lower bound and every hour they touch
an upper bound: an hour whose upper bound is at most the limit is out of breach, one
whose lower bound is above it is in breach throughout, without reading a call. Only the
remaining hours (the windows' sum near the limit) are evaluated call by call: the calls
of ``H`` and of the hours where those windows start are rated on the fly, grouped per
instant (one query per check and rule), and ``g`` is swept over every entry and exit.
Far from the limit a check costs about the hourly query; the calls read are kept
between checks while their hour's rating run is unchanged (:class:`_Calls`), so a rule
hovering at its limit for the whole look-back pays the sweep of every such call at each
check and reads only the changed hours again (``benchmarks/rolling_alerts.py``: 200k
calls in 72 h, 22 s for the first check, 1.5 s for the next ones, on a loaded machine).

Known limits: money is never negative (prices and markups are checked non-negative),
which the bounds rely on; an episode older than the look-back, or data later than it,
is not alerted; a price change that lowers past money can end an episode and a later
breach is then a new one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from meterline.aggregator.alerts._model import ROLLING_THRESHOLD, Alert, digest_id
from meterline.aggregator.pricing import MONEY_CONTEXT, Pricing
from meterline.store import Store

LOOKBACK = timedelta(hours=48)
"""How far back episodes (and their rising edges) are looked for."""

HOUR_NS = 3_600 * 10**9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

HOURLY_SQL = """
SELECT toUnixTimestamp64Nano(toDateTime64(Hour, 9, 'UTC')) AS h,
       toString(sumIf(Amount + MarkupAmount, Status = 'billed')) AS money
FROM {db}.rated_usage_current
WHERE ConsumerId = {consumer:String} AND {feature_condition}
  AND Hour >= {start:DateTime64(0, 'UTC')} AND Hour < {end:DateTime64(0, 'UTC')}
GROUP BY Hour
"""

RECORDED_SQL = """
SELECT Feature, LimitAmount, Data
FROM {db}.alerts FINAL
WHERE Kind = {kind:String} AND ConsumerId = {consumer:String}
  AND PeriodEnd >= {since:DateTime64(3, 'UTC')}
"""


def to_ns(at: datetime) -> int:
    delta = at.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000


def from_ns(ns: int) -> datetime:
    """An instant in ns as a datetime (microseconds: the sub-µs part is cut)."""
    return _EPOCH + timedelta(microseconds=ns // 1_000)


def _floor(ns: int) -> int:
    return ns - ns % HOUR_NS


def _ceil(ns: int) -> int:
    return -((-ns) // HOUR_NS) * HOUR_NS


@dataclass(frozen=True)
class Episode:
    """A stretch of breach: ``g > limit`` from ``start`` to ``end`` (ns)."""

    start: int | None
    """The rising edge (a call's instant); ``None``: under way when the look-back began."""
    end: int | None
    """When ``g`` fell back to the limit or below; ``None``: still in breach."""
    spent: Decimal
    """``g`` at the rising edge (0 for an episode under way at the look-back's start)."""


MARKERS_SQL = """
SELECT toUnixTimestamp64Nano(toDateTime64(Hour, 9, 'UTC')), Run
FROM {db}.rated_hours FINAL
WHERE Hour IN {hours:Array(DateTime64(0, 'UTC'))}
"""

Cache = dict[tuple[Any, ...], tuple[int, list[tuple[int, Decimal]]]]
"""(consumer, feature, pricing version, hour) → (the hour's rating run, its calls)."""


class _Calls:
    """Each call's money in the hours asked for (``instant ns → money``, calls of one
    instant summed), rated on the fly: the invoices' pricing path, exact ``Decimal``.

    With a ``cache`` (kept by the alert service between checks), an hour whose rating
    run (``rated_hours``: a new run whenever its counted usage or the pricing changes) is
    the one its calls were read under is not read again: a rule near its limit re-reads
    the hours that changed (usually the current one), not the whole look-back."""

    def __init__(self, store: Store, pricing: Pricing, rule: Any, cache: Cache | None = None
                 ) -> None:  # fmt: skip
        self.store, self.pricing, self.rule = store, pricing, rule
        self.by_hour: dict[int, list[tuple[int, Decimal]]] = {}
        self.cache = cache
        self.read_hours = 0
        """Hours rated call by call (not from the cache), for the benchmark."""

    def _cached(self, wanted: list[int]) -> tuple[list[int], dict[int, int], tuple[Any, ...]]:
        from meterline.aggregator.rated import config_version

        prefix = (self.rule.consumer, self.rule.feature, config_version(self.pricing))
        if self.cache is None:
            return wanted, {}, prefix
        _, rows = self.store.query(MARKERS_SQL, {"hours": [from_ns(h) for h in wanted]})
        runs = {int(h): int(r) for h, r in rows}
        rest = []
        for h in wanted:
            hit = self.cache.get((*prefix, h))
            if hit is not None and h in runs and hit[0] == runs[h]:
                self.by_hour[h] = hit[1]
            else:
                rest.append(h)
        return rest, runs, prefix

    def load(self, hours: set[int]) -> None:
        from meterline.aggregator.invoices import rate_usage
        from meterline.aggregator.queries.usage import UsageFilter
        from meterline.aggregator.tenancy import Scope

        wanted = sorted(h for h in hours if h not in self.by_hour)
        if not wanted:
            return
        wanted, runs, prefix = self._cached(wanted)
        if not wanted:
            return
        self.read_hours += len(wanted)
        for h in wanted:
            self.by_hour[h] = []
        rule = self.rule
        f = UsageFilter(start=from_ns(wanted[0]), end=from_ns(wanted[-1] + HOUR_NS),
                        consumer=rule.consumer, feature=rule.feature,
                        scope=Scope.only(rule.consumer))  # fmt: skip
        _, rated = rate_usage(self.store, self.pricing, f, extra_keys=("instant_ns",),
                              hours=[from_ns(h) for h in wanted])  # fmt: skip
        plan = self.pricing.config.plan_for(rule.consumer)
        money: dict[int, Decimal] = {}
        with localcontext(MONEY_CONTEXT):
            factor = 1 + plan.markup_percent / 100
            for item in rated:
                g = item.group
                cost = item.cost
                if cost is None or (not g.billable and not plan.bill_failed_requests):
                    continue  # unpriced, or a failed call the plan does not bill
                ns = int(g.extra[0])
                money[ns] = money.get(ns, Decimal(0)) + cost * factor
        for ns in sorted(money):
            self.by_hour.setdefault(_floor(ns), []).append((ns, money[ns]))
        if self.cache is not None:
            for h in wanted:
                if h in runs:
                    self.cache[(*prefix, h)] = (runs[h], self.by_hour[h])

    def within(self, hours: Iterable[int]) -> list[tuple[int, Decimal]]:
        out: list[tuple[int, Decimal]] = []
        for h in sorted(hours):
            out += self.by_hour.get(h, [])
        return out


def _hourly(store: Store, rule: Any, start: int, end: int) -> dict[int, Decimal]:
    params: dict[str, Any] = {"consumer": rule.consumer, "start": from_ns(start),
                              "end": from_ns(end)}  # fmt: skip
    condition = "1"
    if rule.feature is not None:
        params["feature"] = rule.feature
        condition = "Feature = {feature:String}"
    _, rows = store.query(HOURLY_SQL.replace("{feature_condition}", condition), params)
    return {int(h): Decimal(m) for h, m in rows if m is not None and Decimal(m) != 0}


def episodes(
    hourly: dict[int, Decimal], calls: _Calls, window: int, limit: Decimal, first: int, last: int
) -> list[Episode]:
    """The episodes of ``g > limit`` over ``[first, last)`` (whole hours, ns)."""
    w = window
    base = _floor(first - w)
    prefix = [Decimal(0)]
    with localcontext(MONEY_CONTEXT):
        for k in range(base, last, HOUR_NS):
            prefix.append(prefix[-1] + hourly.get(k, Decimal(0)))

        def total(a: int, b: int) -> Decimal:
            """Money of the whole hours in ``[a, b)``."""
            a, b = max(a, base), min(b, last)
            return (
                prefix[(b - base) // HOUR_NS] - prefix[(a - base) // HOUR_NS]
                if b > a
                else Decimal(0)
            )

        span: dict[int, tuple[list[int], int]] = {}  # hour → (fine hours, coarse start)
        state: dict[int, str] = {}  # hour → "out" | "in" | "exact"
        for h in range(first, last, HOUR_NS):
            lo, hi = h - w, h + HOUR_NS - w  # the windows' starts t − W lie in [lo, hi)
            inner = max(_ceil(hi), _floor(lo))  # whole hours in every window: [inner, h)
            fine = [*range(_floor(lo), min(inner, h), HOUR_NS), h]
            span[h] = (fine, inner)
            upper = total(_floor(lo), h + HOUR_NS)
            lower = total(inner, h)
            state[h] = "out" if upper <= limit else "in" if lower > limit else "exact"
        for h in range(first + HOUR_NS, last, HOUR_NS):
            if state[h] == "in" and state[h - HOUR_NS] != "in":
                state[h] = "exact"  # a rising edge may fall on its first instant
        calls.load({k for h, s in state.items() if s == "exact" for k in span[h][0]})
        out: list[Episode] = []
        edge: int | None = None
        spent = Decimal(0)
        inside: bool | None = None  # the state just before the hour; None: unknown (first)

        def move(at: int, now_in: bool, value: Decimal) -> None:
            nonlocal edge, spent, inside
            if inside is None:
                edge, spent = None, Decimal(0)  # under way (or not) at the look-back start
            elif now_in and not inside:
                edge, spent = at, value
            elif inside and not now_in:
                out.append(Episode(edge, at, spent))
            inside = now_in

        for h in range(first, last, HOUR_NS):
            if state[h] != "exact":
                move(h, state[h] == "in", Decimal(0))
                continue
            fine, inner = span[h]
            own = calls.within(fine)
            changes: dict[int, Decimal] = {}
            value = total(inner, h)
            for c, m in own:
                if h - w < c <= h:
                    value += m
                if h < c < h + HOUR_NS:
                    changes[c] = changes.get(c, Decimal(0)) + m
                if h < c + w < h + HOUR_NS:
                    changes[c + w] = changes.get(c + w, Decimal(0)) - m
            move(h, value > limit, value)
            for at in sorted(changes):
                value += changes[at]
                if (value > limit) != inside:
                    move(at, value > limit, value)
        if inside:
            out.append(Episode(edge, None, spent))
    return out


def _recorded_edges(store: Store, rule: Any, since: datetime) -> list[int]:
    """Edges already recorded for ``rule`` (its consumer, feature, limit and window)."""
    _, rows = store.query(RECORDED_SQL, {"kind": ROLLING_THRESHOLD, "consumer": rule.consumer,
                                         "since": since})  # fmt: skip
    edges = []
    for feature, limit, data in rows:
        extra = json.loads(data) if data else {}
        if (str(feature) or None) != rule.feature or Decimal(limit) != rule.limit:
            continue
        if extra.get("window_seconds") == rule.seconds and "crossed_ns" in extra:
            edges.append(int(extra["crossed_ns"]))
    return edges


def rolling_crossings(store: Store, pricing: Pricing, rules: Iterable[Any], now: datetime,
                      *, currency: str, cache: Cache | None = None) -> list[Alert]:  # fmt: skip
    """One alert per new episode of every rolling rule over the last :data:`LOOKBACK`
    (``cache``: per-call money kept between checks, see :class:`_Calls`)."""
    from meterline.aggregator.rated import ensure_rated

    rules = list(rules)
    if not rules:
        return []
    last = _floor(to_ns(now)) + HOUR_NS
    first = last - HOUR_NS - int(LOOKBACK.total_seconds()) * 10**9
    widest = max(r.seconds for r in rules) * 10**9
    scan = _floor(first - widest)
    ensure_rated(store, pricing, from_ns(scan), from_ns(last))
    if cache is not None:
        for key in [k for k in cache if k[-1] < scan]:
            del cache[key]
    alerts: list[Alert] = []
    for rule in rules:
        w = rule.seconds * 10**9
        hourly = _hourly(store, rule, _floor(first - w), last)
        found = episodes(hourly, _Calls(store, pricing, rule, cache), w, rule.limit, first, last)
        known = _recorded_edges(store, rule, from_ns(first))
        for e in found:
            if e.start is None or any(e.start <= k and (e.end is None or k < e.end)
                                      for k in known):  # fmt: skip
                continue
            alerts.append(_alert(rule, e, now, currency))
            known.append(e.start)
    return alerts


def _alert(rule: Any, e: Episode, now: datetime, currency: str) -> Alert:
    assert e.start is not None
    crossed = from_ns(e.start)
    w = rule.seconds * 10**9
    return Alert(
        id=digest_id(
            "alt",
            ROLLING_THRESHOLD,
            rule.consumer,
            rule.feature or "",
            rule.limit,
            rule.seconds,
            e.start,
        ),
        kind=ROLLING_THRESHOLD,
        consumer=rule.consumer,
        feature=rule.feature,
        period="rolling",
        period_start=from_ns(e.start - w),
        period_end=crossed,
        threshold="",
        limit=rule.limit,
        unit=currency,
        spent=e.spent,
        created_at=now,
        data={"window_seconds": rule.seconds, "crossed_ns": e.start},
    )
