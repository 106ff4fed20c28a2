"""Instants the aggregator accepts (``from``, ``to``, ``at``, periods): parsed and checked.

Contract: every time a caller gives — in the API or the CLI — is ISO 8601 (``Z`` or an
offset; no offset means UTC), is converted to UTC, and lies in :data:`EARLIEST` …
:data:`LATEST`; anything else is a :class:`ValueError` with a message for people (the
API answers 422, the CLI exits 1 or 2), never a query the engine cannot run.

- The range is what ``llm_usage.Timestamp`` (``DateTime64(9)``) holds on every supported
  ClickHouse: ticks are Int64 nanoseconds, so the last instant is 2^63 - 1 ns after the
  epoch (2262-04-11T23:47:16.854775807Z, cut here to Python's microseconds); before
  1900-01-01 older servers clamp values silently, so the range starts there.
- Numbers are not times: ``from=20260301`` is rejected rather than read as seconds since
  the epoch (pydantic's default), and fractions finer than a microsecond are rejected
  rather than truncated (a truncated bound would select other calls).

Standard library only: the CLI imports this module without the server's dependencies.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
"""The first instant a time bound may name."""
LATEST = datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC)
"""The last instant ``DateTime64(9)`` holds, to the microsecond."""

_FRACTION = re.compile(r"[.,]([0-9]+)")
_EXAMPLE = "2026-03-01T00:00:00Z"


def iso(value: datetime) -> str:
    """``value`` in ISO 8601, UTC as ``Z``."""
    return value.isoformat().replace("+00:00", "Z")


def check_instant(value: datetime, *, name: str, text: str | None = None) -> datetime:
    """``value`` in UTC (naive means UTC), checked against :data:`EARLIEST`…:data:`LATEST`.

    Args:
        name: the parameter, for the message (``'from'``; empty: none).
        text: what the caller wrote, shown instead of ``value``.

    Raises:
        ValueError: outside the range, or not convertible to UTC.
    """
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        utc = None  # e.g. 0001-01-01T00:00:00+01:00: before year 1 in UTC
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise ValueError(
            f"{_subject(name, text or value.isoformat())} is outside the times meterline "
            f"can store ({iso(EARLIEST)} to {iso(LATEST)})"
        )
    return utc


def parse_instant(text: str, *, name: str) -> datetime:
    """An ISO 8601 time (``2026-03-01``, ``2026-03-01T12:00:00Z``, ``…+02:00``) in UTC.

    Raises:
        ValueError: not ISO 8601, finer than a microsecond, or outside the range.
    """
    if not isinstance(text, str):
        raise ValueError(f"{name or 'a time'} must be an ISO 8601 time such as {_EXAMPLE}")
    shown = repr(text if len(text) <= 64 else text[:64] + "…")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{_subject(name, shown)} is not an ISO 8601 time such as {_EXAMPLE}"
        ) from None
    fraction = _FRACTION.search(text)
    if fraction is not None and fraction.group(1)[6:].strip("0"):
        raise ValueError(
            f"{_subject(name, shown)} is finer than a microsecond (times are kept to 1 µs)"
        )
    return check_instant(value, name=name, text=text)


def _subject(name: str, shown: str) -> str:
    return f"{name} {shown}" if name else shown
