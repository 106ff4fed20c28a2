"""Billing periods: a UTC calendar month (``YYYY-MM``) or an explicit [from, to) range."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime


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
        return re.fullmatch(r"\d{4}-\d{2}", self.label) is not None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def month(label: str) -> Period:
    """The UTC calendar month ``YYYY-MM``.

    Raises:
        ValueError: ``label`` is not ``YYYY-MM``.
    """
    found = re.fullmatch(r"(\d{4})-(\d{2})", label.strip())
    if not found or not 1 <= int(found.group(2)) <= 12:
        raise ValueError(f"period {label!r} is not a month in the form YYYY-MM")
    year, mon = int(found.group(1)), int(found.group(2))
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return Period(label.strip(), start, end)


def between(start: datetime, end: datetime) -> Period:
    """The range [start, end) (naive datetimes are UTC).

    Raises:
        ValueError: ``end`` is not after ``start``.
    """
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError(f"'to' ({_iso(end)}) must be after 'from' ({_iso(start)})")
    return Period(f"{_iso(start)}/{_iso(end)}", start, end)


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
