"""Leases: a slice of headroom granted to one app process, spent down without round trips.

Contract (the guard's side is ``instrumentation/budgets/_lease.py``; docs/budgets.md):

- A lease is a reservation (id ``lse_<fingerprint>_<random>``) whose amount is the slice:
  it counts in ``reserved`` like any reservation, under the same atomic check, so
  ``spent + reservations + leases <= limit`` holds for every hard budget by construction.
- Granted only on a reserve that asks for one (``"lease": true``), when no rate limit
  applies (sliding windows are kept per call: a slice of a window's capacity could be
  spent in a burst the window's own rule would refuse), the model is priced for every
  hard money budget, and every hard budget's free headroom ``H`` (limit - spent -
  reserved) is at least :data:`MIN_HEADROOM_CALLS` times the call's worst case ``W``.
  Its size, per unit, is ``min(MAX_CALLS × W, H / SHARE)`` over the hard budgets of that
  unit: each grant takes at most 1/SHARE of what is free, so leases (of any number of
  processes) never leave less than ``(1 - 1/SHARE) × MIN_HEADROOM_CALLS`` worst cases free
  for others' per-call reservations, and a process near the limit gets none (per call,
  exact). A unit with no hard budget is not limited locally (``null``) and reserves 0.
- Each call under a lease has its own id ``<lease>.<n>`` (on its span) and is reported
  with its actual usage (``POST /v1/reservations/{lease}/calls``, batched): the call
  becomes a *settled* reservation of its own (counted once when its span is stored, as
  any settled reservation) and the lease shrinks by the same amount (not below 0). A
  call number reported twice changes nothing.
- The lease ends when returned (``DELETE``), on expiry (its ``ttl``: the crash bound), or
  is *revoked* — reports answer ``revoked: true`` — once the definitions of the budgets
  or rate limits that apply differ from those it was granted under (the fingerprint in
  its id), so the guard stops using it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any

from meterline.aggregator.pricing import MONEY_CONTEXT, Pricing

PREFIX = "lse_"
MIN_HEADROOM_CALLS = 16
"""A lease is granted only while every hard budget has this many worst cases free."""
SHARE = 8
"""A lease takes at most 1/SHARE of a hard budget's free headroom."""
MAX_CALLS = 64
"""... and at most this many worst cases of the call that asked for it."""
USE_SECONDS = 5
"""How long the guard may admit calls under a lease (then returns it, asks again)."""
MAX_REPORT = 1000
"""Calls in one report."""


def is_lease(rid: str) -> bool:
    return rid.startswith(PREFIX) and "." not in rid


def fingerprint(definitions: Iterable[Any]) -> str:
    """8 hex digits naming the budget and rate-limit definitions that apply."""
    text = json.dumps(sorted(json.dumps(d.to_dict(), sort_keys=True) for d in definitions))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def new_lease_id(fp: str) -> str:
    return f"{PREFIX}{fp}_{secrets.token_urlsafe(15)}"


def fingerprint_of(lease_id: str) -> str | None:
    head = lease_id[len(PREFIX) :]
    return head[:8] if lease_id.startswith(PREFIX) and head[8:9] == "_" else None


def call_id(lease_id: str, n: int) -> str:
    return f"{lease_id}.{n}"


@dataclass(frozen=True)
class Slice:
    """A lease's size in each unit (``None``: no hard budget in that unit)."""

    money: Decimal | None
    tokens: int | None


def size(
    rooms: list[tuple[bool, Decimal, Decimal]], worst_money: Decimal | None, worst_tokens: int
) -> Slice | None:
    """The slice for a call of worst case (``worst_money``, ``worst_tokens``) given each
    hard budget's (in_tokens, free headroom, worst case in its unit); ``None``: no lease."""
    money: Decimal | None = None
    tokens: Decimal | None = None
    for in_tokens, free, worst in rooms:
        if worst <= 0 or free < MIN_HEADROOM_CALLS * worst:
            return None
        with localcontext(MONEY_CONTEXT):
            part = min(MAX_CALLS * worst, free / SHARE)
        if in_tokens:
            tokens = part if tokens is None else min(tokens, part)
        else:
            money = part if money is None else min(money, part)
    if money is not None and worst_money is None:
        return None
    return Slice(money, None if tokens is None else int(tokens))


def prices(
    pricing: Pricing, provider: str, model: str, input_tokens: int, at: datetime, markup: Any
) -> tuple[dict[str, str], int | None] | None:
    """The per-token worst-case prices (markup included, as decimal strings) the guard
    debits with, and the most input tokens they hold for (the next cliff tier's
    threshold; ``None``: no higher tier). Prices are the highest of every level up to that
    threshold, so a smaller call is never debited less than it may cost."""
    match = pricing.book.match(provider, model, model, at)
    if match is None:
        return None
    price_set = match.prices
    bound = next((t for t in price_set.thresholds if t >= input_tokens), None)
    levels = [0] + [t + 1 for t in price_set.thresholds if bound is None or t < bound]
    best_in = best_out = None
    for level in levels:
        unit = price_set.unit_prices(level)
        if "input" not in unit or "output" not in unit:
            return None
        out = max(unit["output"], unit.get("reasoning", unit["output"]))
        best_in = unit["input"] if best_in is None else max(best_in, unit["input"])
        best_out = out if best_out is None else max(best_out, out)
    assert best_in is not None and best_out is not None
    with localcontext(MONEY_CONTEXT):
        per_in = markup(best_in / Decimal(1_000_000))
        per_out = markup(best_out / Decimal(1_000_000))
    return {"input": format(per_in, "f"), "output": format(per_out, "f")}, bound
