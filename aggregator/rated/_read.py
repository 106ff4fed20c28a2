"""Readers of ``rated_usage``: invoices and ``/v1/usage`` costs, the same figures as rating
the counted usage on the fly (tests compare them exactly).

Both read whole UTC hours; callers rate stale months first (:func:`ensure_rated`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
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


def whole_days(start: datetime, end: datetime) -> bool:
    """True when both instants are UTC midnights."""
    return whole_hours(start, end) and start.hour == 0 and end.hour == 0


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
    daily: bool | None = None,
) -> dict[str, Invoice]:
    """Invoices of ``[start, end)`` from the rated rows (see ``build_invoices`` for the
    rules: this applies them to the table's ``Status``). Ranges of whole days read the
    daily sums (``daily``: force either table)."""
    daily = whole_days(start, end) if daily is None else daily
    query, params = sql.invoice_sql(start, end, consumer, scope=scope, daily=daily)
    _, rows = store.query(query, params, settings=READ_SETTINGS)
    drafts: dict[str, _Draft] = {}
    if consumer is not None:
        drafts[consumer] = _Draft()
    invalid: dict[tuple[str, str, str, str], int] = {}
    prices: dict[Decimal, Decimal] = {}
    for c, status, billable, provider, model, token_type, unit, text, reason, q, n in rows:
        c, provider, model = str(c), str(provider), str(model)
        draft = drafts.get(c)
        if draft is None:
            draft = drafts[c] = _Draft()
        quantity, requests = int(q), int(n)
        if status == "invalid":
            key4 = (c, provider, model, str(reason))
            invalid[key4] = invalid.get(key4, 0) + requests
            continue
        if not billable:
            draft.failed += requests
        if status in ("failed", "unpriced"):
            into = draft.failed_usage if status == "failed" else draft.unpriced
            counts = _unbilled_totals(into, (provider, model))
            counts[0] += requests
            counts[1 if token_type in _INPUT_TYPES else 2] += quantity
            counts[3 + _INDEX[token_type]] += quantity
            continue
        if quantity:
            price = prices.setdefault(unit, Decimal(text))
            key = (provider, model, _INDEX[token_type], price)
            draft.lines[key] = draft.lines.get(key, 0) + quantity
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
