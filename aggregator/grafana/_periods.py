"""A budget's current period in SQL, in the budget's own time zone — the same ``[start,
end)`` as :func:`meterline.aggregator.budgets._window.window` (``/v1/budgets``'s
``period_start`` / ``period_end``).

ClickHouse takes a time zone *column* only where it formats (``toString(t, zone)``);
every function that converts a local time back to an instant wants a constant zone. So
a local midnight ``W`` (the wall time, held as if it were UTC) becomes an instant the way
``zoneinfo`` resolves it with ``fold=0``: with the zone's offsets a day before (``a``)
and a day after (``b``), the candidates ``W - a`` and ``W - b``; a candidate is right
when the zone shows ``W`` at it; both right (a repeated midnight): the earlier; neither
(a midnight a DST jump skips): ``W - a``, the offset before the change. Checked against
``zoneinfo`` over every zone's transitions (tests/dashboards/test_budget_periods.py).

Known limits: it assumes at most one offset change within a day of a midnight; the
engine's time zone database is its own (a zone whose rules changed recently can differ
from Python's tzdata); a midnight that a DST change repeats (America/St_Johns until 2011)
may resolve to the second of the two, where ``zoneinfo`` takes the first.
"""

from __future__ import annotations

DAY = 86_400


def _offset(instant: str, zone: str) -> str:
    """Seconds the zone is ahead of UTC at ``instant`` (a DateTime expression)."""
    return f"dateDiff('second', {instant}, toDateTime(toString({instant}, {zone}), 'UTC'))"


def _instant(wall: str, zone: str, name: str) -> str:
    """Columns ending in ``name``: the instant (UTC) at which ``zone``'s clocks show
    ``wall`` (both column names)."""
    a, b = f"{name}_a", f"{name}_b"

    def shows(t: str) -> str:
        return f"{_offset(t, zone)} = dateDiff('second', {t}, {wall})"

    return (
        f"addSeconds({wall}, -{_offset(f'addSeconds({wall}, -{DAY})', zone)}) AS {a},\n"
        f"addSeconds({wall}, -{_offset(f'addSeconds({wall}, {DAY})', zone)}) AS {b},\n"
        f"multiIf(({shows(a)}) AND ({shows(b)}), least({a}, {b}), {shows(b)}, {b}, {a})"
        f" AS {name}"
    )


def period_columns(period: str, zone: str, at: str = "now()") -> str:
    """SELECT columns ``period_start`` and ``period_end`` (DateTime, UTC; ``NULL`` end
    for ``total``): the ``[start, end)`` of the ``period`` (``day``, ``week``, ``month``,
    ``total``) that contains ``at``, in ``zone`` — SQL expressions, columns or literals.
    The helper columns it adds start with ``p_``."""
    local = f"toDateTime(toString(toDateTime({at}, 'UTC'), {zone}), 'UTC')"
    return ",\n".join(
        [
            f"{local} AS p_local",
            f"multiIf({period} = 'day', toStartOfDay(p_local),"
            f" {period} = 'week', toDateTime(toMonday(p_local), 'UTC'),"
            " toDateTime(toStartOfMonth(p_local), 'UTC')) AS p_first",
            f"multiIf({period} = 'day', addDays(p_first, 1),"
            f" {period} = 'week', addDays(p_first, 7), addMonths(p_first, 1)) AS p_next",
            _instant("p_first", zone, "p_start"),
            _instant("p_next", zone, "p_end"),
            f"if({period} = 'total', toDateTime(0, 'UTC'), p_start) AS period_start",
            f"if({period} = 'total', NULL, p_end) AS period_end",
        ]
    )
