"""Readers of ``rated_usage``: invoices and ``/v1/usage`` costs, the same figures as rating
the counted usage on the fly (tests compare them exactly).

Both read whole UTC hours; callers rate stale months first (:func:`ensure_rated`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from meterline.aggregator.invoices._build import _Draft, _finish
from meterline.aggregator.invoices._model import InvalidUsage, Invoice
from meterline.aggregator.pricing import MONEY_CONTEXT, TOKEN_TYPES, Pricing
from meterline.aggregator.queries import READ_SETTINGS
from meterline.aggregator.queries import rated as sql
from meterline.aggregator.queries.usage import UsageFilter
from meterline.aggregator.tenancy import Scope
from meterline.store import Store

_INDEX = {t: i for i, t in enumerate(TOKEN_TYPES)}
_INPUT_TYPES = frozenset({"input", "cache_read", "cache_write", "cache_write_1h"})


def whole_hours(*instants: datetime | None) -> bool:
    """True when every given instant is on a UTC hour (``None``: open, fine)."""
    return all(
        t is None or (t.minute == 0 and t.second == 0 and t.microsecond == 0) for t in instants
    )


def _floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def table_range(store: Store, start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """``[start, end)`` as whole UTC hours the table can answer exactly: itself when whole
    hours; widened to the hours around a partial edge hour that holds no counted usage (a
    budget's ``total`` ends at the last storable instant, 23:47:16 of its hour); else
    ``None`` (rate on the fly). Call when the months of the range are current."""
    if whole_hours(start, end):
        return start, end
    edges = [h for h, t in ((_floor_hour(start), start), (_floor_hour(end), end)) if h != t]
    _, rows = store.query(sql.BUSY_HOURS_SQL, {"hours": edges})
    if rows:
        return None
    wide_end = end if whole_hours(end) else _floor_hour(end) + timedelta(hours=1)
    return _floor_hour(start), wide_end


def whole_days(start: datetime, end: datetime) -> bool:
    """True when both instants are UTC midnights."""
    return whole_hours(start, end) and start.hour == 0 and end.hour == 0


def current_monthly_sums(store: Store, start: datetime, end: datetime) -> list[int]:
    """The whole months of ``[start, end)`` whose monthly sums are built from their days'
    newest sums (a month without usage needs none: its sums are empty either way)."""
    if not sql.months_of(start, end):
        return []
    _, rows = store.query(sql.MONTHLY_STATE_SQL, {"start": start, "end": end})
    behind = {int(m) for m, newest, built in rows if built != newest}
    return [m for m in sql.months_of(start, end) if m not in behind]


def _unbilled_totals(into: dict[tuple[str, str], list[int]], key: tuple[str, str]) -> list[int]:
    counts = into.get(key)
    if counts is None:
        counts = into[key] = [0] * (3 + len(TOKEN_TYPES))
    return counts


def invoices_from_table(
    store: Store,
    pricing: Pricing,
    *,
    start: datetime,
    end: datetime,
    label: str,
    scope: Scope,
    consumer: str | None = None,
    feature: str | None = None,
    daily: bool | None = None,
    monthly: bool | None = None,
) -> dict[str, Invoice]:
    """Invoices of ``[start, end)`` from the rated rows (see ``build_invoices`` for the
    rules: this applies them to the table's ``Status``). Ranges of whole days read the
    daily sums, and their whole months the monthly sums where those are current
    (``daily``, ``monthly``: force the tables), unless ``feature`` is given (only that
    feature's calls: a budget's share; read from the hourly rows, which keep the feature)."""
    if daily is None:
        daily = feature is None and whole_days(start, end)
    months = current_monthly_sums(store, start, end) if daily and monthly is not False else []
    query, params = sql.invoice_sql(
        start, end, consumer, scope=scope, daily=daily, feature=feature, months=months
    )
    _, rows = store.query(query, params, settings=READ_SETTINGS)
    drafts: dict[str, _Draft] = {}
    if consumer is not None:
        drafts[consumer] = _Draft()
    invalid: dict[tuple[str, str, str, str], int] = {}
    prices: dict[str, Decimal] = {}
    for c, status, billable, provider, model, token_type, text, reason, q, n in rows:
        draft = drafts.get(c)
        if draft is None:
            draft = drafts[c] = _Draft()
        if status == "billed":
            if q != "0":
                price = prices.get(text)
                if price is None:
                    price = prices[text] = Decimal(text)
                key = (provider, model, _INDEX[token_type], price)
                lines = draft.lines
                lines[key] = lines.get(key, 0) + int(q)
            if not billable:
                draft.failed += n
            continue
        quantity, requests = int(q), n
        if status == "invalid":
            key4 = (c, provider, model, str(reason))
            invalid[key4] = invalid.get(key4, 0) + requests
            continue
        if not billable:
            draft.failed += requests
        into = draft.failed_usage if status == "failed" else draft.unpriced
        counts = _unbilled_totals(into, (provider, model))
        counts[0] += requests
        counts[1 if token_type in _INPUT_TYPES else 2] += quantity
        counts[3 + _INDEX[token_type]] += quantity
    for c, *_ in invalid:
        drafts.setdefault(c, _Draft())
    with localcontext(MONEY_CONTEXT):
        invoices = {c: _finish(c, d, pricing.config, label) for c, d in sorted(drafts.items())}
    for (c, provider, model, reason), requests in sorted(invalid.items()):
        inv = invoices[c]
        invoices[c] = replace(
            inv, invalid=(*inv.invalid, InvalidUsage(provider, model, reason, requests))
        )
    return invoices


def _key(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def costs_from_table(store: Store, f: UsageFilter) -> dict[tuple[Any, ...], list[Any]]:
    """Cost and unpriced requests per ``f.group_by`` key, from the rated rows."""
    query, params = sql.usage_cost_sql(f)
    _, rows = store.query(query, params, settings=READ_SETTINGS)
    n = len(f.group_by)
    out: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        cost, unpriced = row[n], int(row[n + 1])
        out[tuple(_key(v) for v in row[:n])] = [
            Decimal(0) if cost is None else Decimal(cost),
            unpriced,
        ]
    return out


def daily_spend(
    store: Store,
    pricing: Pricing,
    start: datetime,
    end: datetime,
    *,
    by: str,
    scope: Scope,
) -> dict[tuple[str, str], Decimal]:
    """Billed money per (UTC day ``YYYY-MM-DD``, consumer or ``provider/model``) over the
    whole days ``[start, end)``: from the daily sums when the months are current, else
    rated on the fly (the same money)."""
    return daily_spends(store, pricing, start, end, by=(by,), scope=scope)[by]


def daily_spends(
    store: Store,
    pricing: Pricing,
    start: datetime,
    end: datetime,
    *,
    by: tuple[str, ...],
    scope: Scope,
) -> dict[str, dict[tuple[str, str], Decimal]]:
    """:func:`daily_spend` for each key of ``by`` at once (one scan of the daily sums)."""
    from meterline.aggregator.rated._run import stale_months

    if whole_days(start, end) and not stale_months(store, pricing, start, end):
        query, params = sql.daily_spend_sql(start, end, by=by, scope=scope)
        _, rows = store.query(query, params, settings=READ_SETTINGS)
        spends: dict[str, dict[tuple[str, str], Decimal]] = {k: {} for k in by}
        for d, key, n, b in rows:
            if b is not None:
                spends[by[key]][(str(d), str(n))] = Decimal(b)
        return spends
    from meterline.aggregator.invoices._usage_costs import usage_costs_on_the_fly

    out: dict[str, dict[tuple[str, str], Decimal]] = {}
    for name in by:
        keys = ("day", "consumer") if name == "consumer" else ("day", "provider", "model")
        f = UsageFilter(start=start, end=end, group_by=keys, scope=scope)
        points = out[name] = {}
        for key, (cost, _) in usage_costs_on_the_fly(store, pricing, f).by_key.items():
            if cost:
                day = key[0].date().isoformat()
                label = key[1] if name == "consumer" else f"{key[1]}/{key[2]}"
                points[(day, label)] = points.get((day, label), Decimal(0)) + cost
    return out
