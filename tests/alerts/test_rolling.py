"""Rolling windows exact for ANY window, wherever it starts (issue 11 §5: "more than $X in
any 24 h"): spend spread over 25 partial hours across a day, a month and a year boundary,
exactly the limit, windows shorter than an hour, late data that moves an episode's start,
and a randomised comparison with a brute force over every call.

Money (tests/aggregator/pricing_config.py): gpt-4o costs 2.00 per million input tokens
from 2026-03-16; acme pays 20 % markup (300k tokens = 0.72), globex none (300k = 0.60).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from meterline.aggregator.alerts._rolling import to_ns
from meterline.aggregator.tenancy import Scope
from tests.aggregator._budgets import Clock, admin
from tests.aggregator._calls import Call, insert_calls, utc
from tests.alerts._support import SECRET, SECRET_ENV, alert_app, alerts_yaml


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def _rule(consumer: str = "globex", limit: str = "1.00", window: str = "24h", **extra) -> str:
    fields = {"consumer": consumer, "limit": f'"{limit}"', "window": window, **extra}
    return "    - {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


def _service(store, tmp_path, now: datetime, *rules: str):
    clock = Clock(now)
    app, service = alert_app(store, tmp_path, clock, alerts_yaml(rolling="\n".join(rules)))
    return clock, app, service


@pytest.mark.parametrize(
    "first",
    [utc(2026, 3, 21, 23, 40), utc(2026, 4, 30, 23, 40), utc(2026, 12, 31, 23, 40)],
    ids=["day", "month", "year"],
)
def test_spend_over_25_partial_hours_is_found_across_a_boundary(store, tmp_path, first):
    """23:40 → 23:20 the next day is less than 24 h but touches 25 UTC hours: no window
    of whole hours holds both calls, the window (23:20 − 24 h, 23:20] does. The same for
    a 1 h window across midnight (23:40 → 00:20)."""
    second = first + timedelta(hours=23, minutes=40)
    late = first + timedelta(minutes=40)  # 00:20 after midnight
    _clock, _, service = _service(store, tmp_path, second + timedelta(minutes=5),
                                 _rule(), _rule("acme", "1.00", "1h"))  # fmt: skip
    insert_calls(store, [
        Call(first, consumer="globex", input=300_000),   # 0.60
        Call(second, consumer="globex", input=300_000),  # 0.60: 1.20 in 23 h 40 min
        Call(first, consumer="acme", input=250_000),     # 0.60 (with markup)
        Call(late, consumer="acme", input=250_000),      # 0.60: 1.20 in 40 min
    ])  # fmt: skip
    found = sorted(service.check(), key=lambda a: a.consumer)
    assert [(a.consumer, a.period_end, a.spent) for a in found] == [
        ("acme", late, Decimal("1.20")),
        ("globex", second, Decimal("1.20")),
    ]
    assert found[1].period_start == second - timedelta(hours=24)
    assert found[0].period_start == late - timedelta(hours=1)
    assert service.check() == []  # the same episodes: nothing new


def test_exactly_the_limit_is_not_more_and_a_window_is_half_open(store, tmp_path):
    """Exactly 1.00 in a window: no alert. Two calls exactly 24 h apart are in no window
    of 24 h ((t − 24 h, t]); a microsecond less apart, they are."""
    a = utc(2026, 3, 24, 10, 0, 0)
    _clock, _, service = _service(store, tmp_path, utc(2026, 3, 25, 12), _rule())
    insert_calls(store, [
        Call(a, consumer="globex", input=250_000),  # 0.50
        Call(a + timedelta(hours=23, minutes=59, seconds=59), consumer="globex",
             input=250_000),  # 0.50: exactly 1.00
    ])  # fmt: skip
    assert service.check() == []
    insert_calls(store, [Call(a + timedelta(hours=24), consumer="globex", input=300_000)])
    found = service.check()
    assert [(x.period_end, x.spent) for x in found] == [
        (a + timedelta(hours=24), Decimal("1.10"))
    ]  # 0.50 + 0.60: the first call left its window exactly then


def test_the_window_boundary_to_the_microsecond(store, tmp_path):
    a = utc(2026, 3, 24, 3, 17, 5)
    _, _, service = _service(store, tmp_path, utc(2026, 3, 25, 12), _rule())
    insert_calls(store, [
        Call(a, consumer="globex", input=300_000),
        Call(a + timedelta(hours=24), consumer="globex", input=300_000),  # 24 h apart: no
    ])  # fmt: skip
    assert service.check() == []
    c = a + timedelta(hours=24, microseconds=-1)  # less than 24 h after a
    insert_calls(store, [Call(c, consumer="globex", input=300_000)])
    [x] = service.check()
    assert x.period_end == c and x.spent == Decimal("1.20")


def test_windows_shorter_than_an_hour(store, tmp_path):
    t = utc(2026, 3, 22, 12, 55)
    _, _, service = _service(store, tmp_path, utc(2026, 3, 22, 14),
                             _rule("globex", "1.00", "10m"),
                             _rule("globex", "0.50", "90s"))  # fmt: skip
    insert_calls(store, [
        Call(t, consumer="globex", input=300_000),                         # 0.60
        Call(t + timedelta(minutes=9, seconds=59), consumer="globex",
             input=300_000),                                               # 13:04:59
        Call(utc(2026, 3, 22, 13, 30), consumer="globex", input=300_000),
        Call(utc(2026, 3, 22, 13, 40), consumer="globex", input=300_000),  # 10 min: no
    ])  # fmt: skip
    found = sorted(service.check(), key=lambda a: (a.data["window_seconds"], a.period_end))
    assert [(a.data["window_seconds"], a.period_end, a.spent) for a in found] == [
        (90, t, Decimal("0.60")),  # every call alone passes 0.50: four episodes
        (90, t + timedelta(minutes=9, seconds=59), Decimal("0.60")),
        (90, utc(2026, 3, 22, 13, 30), Decimal("0.60")),
        (90, utc(2026, 3, 22, 13, 40), Decimal("0.60")),
        (600, t + timedelta(minutes=9, seconds=59), Decimal("1.20")),
    ]


def test_late_data_that_moves_an_episode_start_is_not_a_second_alert(store, tmp_path):
    clock, app, service = _service(store, tmp_path, utc(2026, 3, 22, 21), _rule())
    d = utc(2026, 3, 22)
    insert_calls(
        store,
        [
            Call(d + timedelta(hours=10), consumer="globex", input=300_000),
            Call(d + timedelta(hours=20), consumer="globex", input=300_000),
        ],
    )
    [first] = service.check()
    # a call stored late, at 15:00: the window passes the limit five hours earlier now,
    # and at 23:00 another: the same episode (it never fell back to the limit)
    insert_calls(store, [Call(d + timedelta(hours=15), consumer="globex", input=300_000)])
    assert service.check() == []
    clock.now = d + timedelta(hours=23)
    insert_calls(store, [Call(d + timedelta(hours=22), consumer="globex", input=300_000)])
    assert service.check() == []
    [listed] = admin(app).get("/v1/alerts?kind=rolling.threshold").json()["alerts"]
    assert first.period_end == d + timedelta(hours=20) and listed["id"] == first.id


def test_late_data_that_joins_two_episodes_is_no_third_alert(store, tmp_path):
    t = utc(2026, 3, 22, 10)
    _clock, app, service = _service(store, tmp_path, t + timedelta(hours=3),
                                   _rule("beta", "1.00", "1h"))  # fmt: skip
    insert_calls(
        store,
        [
            Call(t, consumer="beta", input=600_000),  # 1.20 alone
            Call(t + timedelta(minutes=90), consumer="beta", input=600_000),
        ],
    )
    assert [a.period_end for a in service.check()] == [t, t + timedelta(minutes=90)]
    # stored late, at 10:50: the window stays above 1.00 from 10:00 to 12:30 — one
    # episode that holds both recorded edges
    insert_calls(store, [Call(t + timedelta(minutes=50), consumer="beta", input=600_000)])
    assert service.check() == []
    # stored late, apart from both: a new episode, alerted once
    insert_calls(store, [Call(t - timedelta(hours=3), consumer="beta", input=600_000)])
    assert [a.period_end for a in service.check()] == [t - timedelta(hours=3)]
    assert service.check() == []
    assert len(admin(app).get("/v1/alerts?kind=rolling.threshold").json()["alerts"]) == 3


def test_a_restarted_service_finds_the_same_episodes(store, tmp_path):
    """The episodes are recorded with their edges: a new service over the same store
    (a restart, another replica) records nothing again, even after late data."""
    _clock, _app, service = _service(store, tmp_path, utc(2026, 3, 22, 21), _rule())
    d = utc(2026, 3, 22)
    insert_calls(
        store,
        [
            Call(d + timedelta(hours=10), consumer="globex", input=300_000),
            Call(d + timedelta(hours=20), consumer="globex", input=300_000),
        ],
    )
    assert len(service.check()) == 1
    insert_calls(store, [Call(d + timedelta(hours=12), consumer="globex", input=300_000)])
    (tmp_path / "b").mkdir()
    _, _, other = _service(store, tmp_path / "b", utc(2026, 3, 22, 21), _rule())
    assert other.check() == []
    assert len(other.outbox.alerts(Scope.ALL)) == 1


def _brute_edges(calls: list[tuple[int, Decimal]], window: int, limit: Decimal) -> list:
    """Rising edges of ``g(t) = money in (t − W, t]`` evaluated at every entry and exit."""
    events = sorted({c for c, _ in calls} | {c + window for c, _ in calls})
    edges, inside = [], False
    for t in events:
        g = sum((m for c, m in calls if t - window < c <= t), Decimal(0))
        if g > limit and not inside:
            edges.append((t, g))
        inside = g > limit
    return edges


def test_random_spend_matches_a_brute_force_over_every_call(store, tmp_path):
    rng = random.Random(11)
    start = utc(2026, 3, 20, 0)
    now = utc(2026, 3, 22, 6)
    windows = ["5h17m", "1h", "24h", "7m"]
    limits = ["0.71", "0.35", "1.90", "0.20"]
    rules = [_rule("acme", lim, w) for lim, w in zip(limits, windows, strict=True)]
    _clock, _, service = _service(store, tmp_path, now, *rules)
    calls = []
    for _ in range(70):
        at = start + timedelta(
            seconds=rng.randrange(0, 54 * 3600), microseconds=rng.randrange(10**6)
        )
        tokens = rng.choice([10_000, 40_000, 75_000, 120_000, 3])
        calls.append(Call(at, consumer="acme", input=tokens))
    calls.append(Call(start + timedelta(hours=30), consumer="acme", input=80_000, error="500"))
    insert_calls(store, calls)
    money = [(to_ns(c.at), Decimal(c.input) * 2 / 10**6 * Decimal("1.2"))
             for c in calls if c.error is None]  # fmt: skip
    found = service.check()
    first = to_ns(utc(2026, 3, 20, 6))  # the look-back: 48 h before the hour of now
    expected = set()
    for w, lim in zip(windows, limits, strict=True):
        from meterline.config._stripe import duration

        seconds = int(duration(w).total_seconds())
        edges = _brute_edges(money, seconds * 10**9, Decimal(lim))
        expected |= {(seconds, t, g) for t, g in edges if t > first}
    got = {(a.data["window_seconds"], a.data["crossed_ns"], a.spent) for a in found}
    assert got == expected and len(got) > 8
    assert service.check() == []


def test_late_data_in_an_hour_read_call_by_call_is_seen(store, tmp_path):
    """The calls of hours near the limit are kept between checks while the hour's rating
    run is the same: a call stored late in such an hour is seen at the next check."""
    _, _, service = _service(store, tmp_path, utc(2026, 3, 22, 13), _rule("globex", "1.00", "1h"))
    t = utc(2026, 3, 22, 10, 5)
    insert_calls(
        store,
        [
            Call(t, consumer="globex", input=300_000),
            Call(t + timedelta(minutes=110), consumer="globex", input=300_000),
        ],
    )
    assert service.check() == []  # 1.20 in hours 10-11, never within one hour
    assert any(k[-1] == to_ns(utc(2026, 3, 22, 11)) for k in service._calls)  # kept
    late = t + timedelta(minutes=85)  # 11:30, in the hour kept
    insert_calls(store, [Call(late, consumer="globex", input=300_000)])
    [x] = service.check()
    assert (x.period_end, x.spent) == (t + timedelta(minutes=110), Decimal("1.20"))
