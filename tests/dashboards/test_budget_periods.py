"""A budget's current period in SQL (aggregator/grafana/_periods.py) is the period
``/v1/budgets`` computes in Python (budgets/_window.py) — checked in the engine at every
offset change of zones with DST, half- and quarter-hour offsets, midnights that a DST
jump skips, from 2010 to 2028, at the change, a second either side and a day later, for
day, week and month budgets. A midnight a DST change *repeats* (America/St_Johns until
2011, changing at 00:01) is the known exception: Python's ``fold=0`` picks the first
midnight, whose day then does not contain the hour between them; the engine may pick
the second."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest

from meterline.aggregator.budgets._window import window
from meterline.aggregator.grafana._periods import period_columns
from meterline.store import Store

pytest.importorskip("chdb")

ZONES = [
    "UTC", "Europe/Paris", "Europe/London", "America/New_York", "America/Los_Angeles",
    "America/Sao_Paulo",  # DST began at 00:00 until 2019: a skipped midnight
    "America/Santiago", "America/Asuncion", "America/Havana", "Asia/Beirut", "Africa/Cairo",
    "Asia/Damascus", "Asia/Amman", "Asia/Gaza", "Asia/Tehran", "America/Godthab",
    "Asia/Kolkata", "Asia/Kathmandu", "Australia/Adelaide", "Australia/Lord_Howe",
    "Pacific/Chatham", "Pacific/Apia", "Pacific/Kiritimati", "Pacific/Pago_Pago",
    "Pacific/Auckland", "Asia/Tokyo", "Atlantic/Azores", "America/St_Johns",
]  # fmt: skip


def _changes(zone: zoneinfo.ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The instants (to the second) at which ``zone``'s offset changes."""
    out = []
    day = start
    while day < end:
        nxt = day + timedelta(days=1)
        if day.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            lo, hi = day, nxt
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(microsecond=0)
                if mid.astimezone(zone).utcoffset() == lo.astimezone(zone).utcoffset():
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
        day = nxt
    return out


def _cases() -> list[tuple[str, datetime]]:
    cases = []
    for name in ZONES:
        zone = zoneinfo.ZoneInfo(name)
        changes = _changes(zone, datetime(2010, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
        cases += [(name, datetime(2026, 12, 2, 6, 30, tzinfo=UTC))]
        for t in changes:
            for d in (timedelta(0), timedelta(seconds=1), -timedelta(seconds=1),
                      timedelta(hours=3), timedelta(days=1)):  # fmt: skip
                cases.append((name, t + d))
    return cases


def test_the_sql_period_is_the_api_period(store: Store) -> None:
    cases = _cases()
    values = ", ".join(f"('{z}', toDateTime('{a:%Y-%m-%d %H:%M:%S}', 'UTC'))" for z, a in cases)
    sql = f"""SELECT zone, period, toString(at), toString(at, zone), toString(period_start),
       toString(period_end)
FROM (SELECT zone, period, at, {period_columns("period", "zone", "at")}
      FROM (SELECT tupleElement(c, 1) AS zone, tupleElement(c, 2) AS at
            FROM (SELECT arrayJoin([{values}]) AS c)) AS cases
      CROSS JOIN (SELECT arrayJoin(['day', 'week', 'month', 'total']) AS period) AS p)"""
    _, rows = store.query(sql)  # the process's one engine (chdb allows no second)
    assert len(rows) == 4 * len(cases)
    wrong, other_tzdata, repeated = [], set(), set()
    for zone, period, at_text, local, start, end in rows:
        at = datetime.fromisoformat(at_text).replace(tzinfo=UTC)
        if at.astimezone(zoneinfo.ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S") != local:
            other_tzdata.add(zone)  # the engine's tz database is another version
            continue
        s, e = window(period, at, zone)
        if period == "total":
            assert (start, end) == ("1970-01-01 00:00:00", None), (zone, at)
            continue
        expected = (s.strftime("%Y-%m-%d %H:%M:%S"), e.strftime("%Y-%m-%d %H:%M:%S"))
        if (start, end) != expected and (_repeated(s, zone) or _repeated(e, zone)):
            repeated.add(zone)  # documented: see the module docstring of _periods
        elif (start, end) != expected:
            wrong.append((zone, period, at_text, (start, end), expected))
    assert wrong == []
    assert len(other_tzdata) <= 3, other_tzdata  # the check checked (nearly) every zone
    assert repeated <= {"America/St_Johns"}, repeated


def _repeated(instant: datetime, zone: str) -> bool:
    """Whether the local midnight at ``instant`` occurs twice (a DST change at 00:01)."""
    local = instant.astimezone(zoneinfo.ZoneInfo(zone)).replace(tzinfo=None)
    tz = zoneinfo.ZoneInfo(zone)
    return (
        local.replace(tzinfo=tz, fold=0).utcoffset() != local.replace(tzinfo=tz, fold=1).utcoffset()
    )
