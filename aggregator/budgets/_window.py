"""The current period of a budget: ``[start, end)`` in UTC, from local midnights.

Days start at 00:00 in the budget's time zone, weeks on Monday 00:00 (ISO), months on
the 1st at 00:00; ``total`` is every stored instant. A local midnight that a daylight
saving change skips or repeats resolves the way :mod:`zoneinfo` does (``fold=0``: the
first of two, the instant after a gap), so consecutive periods always meet exactly.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

from meterline.aggregator._instants import EARLIEST, LATEST


@lru_cache(maxsize=256)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _midnight(day: date, zone: zoneinfo.ZoneInfo) -> datetime:
    # a skipped midnight (a DST jump at 00:00) maps, with fold=0, to the jump itself
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def window(period: str, at: datetime, timezone: str = "UTC") -> tuple[datetime, datetime]:
    """The period containing ``at`` (aware or naive UTC) as UTC ``[start, end)``.

    Raises:
        ValueError: an unknown period.
    """
    if period == "total":
        return EARLIEST, LATEST
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
    zone = _zone(timezone)
    today = at.astimezone(zone).date()
    if period == "day":
        first, following = today, today + timedelta(days=1)
    elif period == "week":
        first = today - timedelta(days=today.weekday())
        following = first + timedelta(days=7)
    elif period == "month":
        first = today.replace(day=1)
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return _midnight(first, zone), _midnight(following, zone)
