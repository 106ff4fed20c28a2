"""What each closed window is worth to each meter, read from the rated-usage table.

Contract:
- A window is a UTC hour or day (``stripe.window``); it is *closed* once its end plus
  ``stripe.grace`` has passed. Only closed windows are read.
- Rows come from ``rated_usage_current`` (issue 10 §1: the same money invoices read),
  ``Status`` ``billed`` — plus ``unpriced`` for token meters when ``unpriced: send``.
  Failed calls the plan does not bill and invalid usage never count.
- A token meter's value is the exact sum of its token types' quantities. A cost meter's
  is the window's billed money (amount + plan markup, exact ``Decimal``) divided by
  ``unit`` and rounded half-up to a whole number, per window: over ``n`` windows the sum
  sent differs from the exact money by at most ``n × unit / 2``.
- Unpriced usage a meter does not send is *held*: its quantity is reported per window
  (it goes out as a correction once the usage is priced and re-rated).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from meterline.aggregator.pricing import MONEY_CONTEXT
from meterline.aggregator.stripe._config import MeterConfig, StripeConfig
from meterline.store import Store

__all__ = ["WindowValue", "closed_until", "floor_window", "window_values"]

WINDOW_SQL = """
SELECT ConsumerId, {bucket} AS W, Feature, Provider, Model, TokenType, Status,
       sum(Quantity) AS Q, sum(Amount) AS A, sum(MarkupAmount) AS M
FROM {{db}}.rated_usage_current
WHERE Hour >= {{start:DateTime64(0, 'UTC')}} AND Hour < {{end:DateTime64(0, 'UTC')}}
  AND Status IN ('billed', 'unpriced')
GROUP BY ConsumerId, W, Feature, Provider, Model, TokenType, Status
"""

_BUCKETS = {"hour": "Hour", "day": "toStartOfDay(Hour, 'UTC')"}


@dataclass(frozen=True)
class WindowValue:
    """One meter's value for one consumer and window."""

    consumer: str
    event_name: str
    start: datetime
    """The window's start (UTC): the meter event's ``timestamp``."""
    value: int
    """The whole number Stripe should hold for the window in total."""
    exact: Decimal
    """Before rounding: tokens, or money / unit for a cost meter."""
    money: Decimal
    """Billed money counted (cost meters; 0 for token meters)."""
    held: int
    """Unpriced tokens this meter holds back for the window."""


def floor_window(at: datetime, window: str) -> datetime:
    """The start of the window holding ``at`` (UTC)."""
    at = at.astimezone(UTC)
    if window == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(minute=0, second=0, microsecond=0)


def closed_until(now: datetime, config: StripeConfig) -> datetime:
    """The end of the newest closed window: every window ending at or before it is closed."""
    return floor_window(now - config.grace, config.window)


def _meter_value(meter: MeterConfig, tokens: int, money: Decimal) -> tuple[int, Decimal]:
    if meter.value == "tokens":
        return tokens, Decimal(tokens)
    assert meter.unit is not None
    with localcontext(MONEY_CONTEXT):
        exact = money / meter.unit
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)), exact


def window_values(
    store: Store, config: StripeConfig, *, start: datetime, end: datetime
) -> list[WindowValue]:
    """Every (consumer, meter, window) with usage in ``[start, end)``, whole windows.

    Args:
        start: a window start (inclusive).
        end: a window start (exclusive); pass :func:`closed_until` for closed windows only.
    """
    sql = WINDOW_SQL.format(bucket=_BUCKETS[config.window])
    _, rows = store.query(sql, {"start": start, "end": end})
    return list(_fold(rows, config))


@dataclass
class _Acc:
    tokens: int = 0
    money: Decimal = Decimal(0)
    held: int = 0


def _utc(value: object) -> datetime:
    start = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)


def _fold(rows: Iterable[tuple[Any, ...]], config: StripeConfig) -> Iterable[WindowValue]:
    send_unpriced = config.unpriced == "send"
    acc: dict[tuple[str, str, datetime], _Acc] = {}
    # the meters a row counts for depend on its four labels only; a window's start on W
    meters_of: dict[tuple[str, str, str, str], list[MeterConfig]] = {}
    starts: dict[object, datetime] = {}
    with localcontext(MONEY_CONTEXT):
        for consumer, w, feature, provider, model, token_type, status, q, a, m in rows:
            labels = (str(token_type), str(provider), str(model), str(feature))
            counting = meters_of.get(labels)
            if counting is None:
                counting = meters_of[labels] = [
                    meter
                    for meter in config.meters
                    if meter.counts(
                        token_type=labels[0], provider=labels[1], model=labels[2], feature=labels[3]
                    )
                ]
            if not counting:
                continue
            start = starts.get(w)
            if start is None:
                start = starts[w] = _utc(w)
            quantity = int(q)
            unpriced = status == "unpriced"
            money = Decimal(0) if unpriced else Decimal(a or 0) + Decimal(m or 0)
            consumer = str(consumer)
            for meter in counting:
                slot = acc.get((consumer, meter.event_name, start))
                if slot is None:
                    slot = acc[(consumer, meter.event_name, start)] = _Acc()
                if unpriced:
                    if send_unpriced and meter.value == "tokens":
                        slot.tokens += quantity
                    else:
                        slot.held += quantity
                    continue
                slot.tokens += quantity
                slot.money += money
    meters = {m.event_name: m for m in config.meters}
    for (consumer, event_name, start), slot in sorted(acc.items()):
        meter = meters[event_name]
        value, exact = _meter_value(meter, slot.tokens, slot.money)
        yield WindowValue(
            consumer=consumer,
            event_name=event_name,
            start=start,
            value=value,
            exact=exact,
            money=slot.money if meter.value == "cost" else Decimal(0),
            held=slot.held,
        )
