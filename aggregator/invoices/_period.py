"""Billing periods: a UTC calendar month (``YYYY-MM``) or an explicit [from, to) range.

Both lie inside the instants of :mod:`meterline.aggregator._instants` (1900-01 to
2262-03 for months); anything else is a :class:`ValueError`, so a period the engine
cannot represent never reaches a query. Month digits are ASCII: ``２０２６-03`` is not
``2026-03`` (it would otherwise name a second, separately finalised month).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from meterline.aggregator._instants import EARLIEST, LATEST, check_instant, iso

_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")
_FIRST_MONTH = (EARLIEST.year, EARLIEST.month)
_LAST_MONTH = (LATEST.year, LATEST.month - 1)
"""The last month that ends inside the range (2262-03)."""
_RANGE = f"{_FIRST_MONTH[0]:04d}-{_FIRST_MONTH[1]:02d} to {_LAST_MONTH[0]:04d}-{_LAST_MONTH[1]:02d}"


@dataclass(frozen=True)
class Period:
    """A half-open UTC time range with the label invoices carry."""

    label: str
    """``YYYY-MM`` for a month, else ``<from>/<to>`` in ISO 8601."""
    start: datetime
    """Inclusive (UTC)."""
    end: datetime
    """Exclusive (UTC)."""

    @property
    def is_month(self) -> bool:
        return _MONTH.fullmatch(self.label) is not None


def month(label: str) -> Period:
    """The UTC calendar month ``YYYY-MM``.

    Raises:
        ValueError: ``label`` is not ``YYYY-MM``, or a month outside the stored range.
    """
    found = _MONTH.fullmatch(label.strip())
    if not found or not 1 <= int(found.group(2)) <= 12:
        shown = label if len(label) <= 64 else label[:64] + "…"
        raise ValueError(f"period {shown!r} is not a month in the form YYYY-MM")
    year, mon = int(found.group(1)), int(found.group(2))
    if not _FIRST_MONTH <= (year, mon) <= _LAST_MONTH:
        raise ValueError(
            f"period {found.group(0)} is outside the months meterline can store ({_RANGE})"
        )
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return Period(found.group(0), start, end)


def between(start: datetime, end: datetime) -> Period:
    """The range [start, end) (naive datetimes are UTC).

    Raises:
        ValueError: ``end`` is not after ``start``, or either is outside the stored range.
    """
    start, end = check_instant(start, name="'from'"), check_instant(end, name="'to'")
    if end <= start:
        raise ValueError(f"'to' ({iso(end)}) must be after 'from' ({iso(start)})")
    return Period(f"{iso(start)}/{iso(end)}", start, end)


def resolve_period(
    period: str | None, start: datetime | None = None, end: datetime | None = None
) -> Period:
    """A period from ``period=YYYY-MM`` or from both ``from`` and ``to``.

    Raises:
        ValueError: neither or both forms given, or a malformed value.
    """
    if period is not None:
        if start is not None or end is not None:
            raise ValueError("give either 'period' or 'from' and 'to', not both")
        return month(period)
    if start is None or end is None:
        raise ValueError("give 'period' (YYYY-MM) or both 'from' and 'to'")
    return between(start, end)
