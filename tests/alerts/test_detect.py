"""Crossings recorded once per threshold and period, across day and month boundaries,
rolling windows, and ``GET /v1/alerts`` per key kind.

Money (tests/aggregator/pricing_config.py): gpt-4o from 2026-03-16 costs 2.00 per million
input tokens and acme pays 20 % markup, so 100k input tokens bill 0.24 to acme; globex
pays no markup (0.20).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from meterline.aggregator.keys import create_key
from meterline.aggregator.tenancy import Scope
from tests.aggregator._budgets import Clock, admin
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator._tenants import client
from tests.alerts._support import SECRET, SECRET_ENV, alert_app, alerts_yaml


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def _budget(app, consumer: str = "acme", **body) -> None:
    body = {"limit": "1.00", "unit": "USD", "period": "day", "mode": "soft",
            "thresholds": [50, 100], **body}  # fmt: skip
    assert admin(app).put(f"/v1/budgets/{consumer}", json=body).status_code in (200, 201)


def _keys(alerts) -> list[tuple[str, str, str]]:
    return sorted((a.consumer, a.period_start.isoformat(), a.threshold) for a in alerts)


def test_each_threshold_once_per_day_and_again_the_next_day(store, tmp_path):
    clock = Clock(utc(2026, 3, 20, 12))
    app, service = alert_app(store, tmp_path, clock, alerts_yaml())
    _budget(app)
    insert_calls(store, [Call(utc(2026, 3, 20, 11), input=300_000)])  # 0.72: 72 %
    assert _keys(service.check()) == [("acme", "2026-03-20T00:00:00+00:00", "50")]
    assert service.check() == []  # found again: nothing new
    insert_calls(store, [Call(utc(2026, 3, 20, 11, 30), input=200_000)])  # 1.20
    assert _keys(service.check()) == [("acme", "2026-03-20T00:00:00+00:00", "100")]
    assert service.check() == []
    clock.now = utc(2026, 3, 21, 0, 30)  # the next day starts with no alerts
    assert service.check() == []
    insert_calls(store, [Call(utc(2026, 3, 21, 0, 10), input=300_000)])
    assert _keys(service.check()) == [("acme", "2026-03-21T00:00:00+00:00", "50")]
    # usage stored late for the 21st, found only after midnight: the 21st's crossing
    clock.now = utc(2026, 3, 22, 0, 5)
    insert_calls(store, [Call(utc(2026, 3, 21, 23, 50), input=300_000)])
    assert _keys(service.check()) == [("acme", "2026-03-21T00:00:00+00:00", "100")]
    assert service.check() == []
    listed = admin(app).get("/v1/alerts").json()["alerts"]
    assert len(listed) == 4 and {a["kind"] for a in listed} == {"budget.threshold"}
    first = next(a for a in listed if a["threshold"] == 50
                 and a["period_start"] == "2026-03-20T00:00:00Z")  # fmt: skip
    assert (first["spent"], first["limit"], first["unit"], first["period_end"]) == (
        "0.72",
        "1.00",
        "USD",
        "2026-03-21T00:00:00Z",
    )  # the invoice's money at the check


def test_month_budget_across_the_month_boundary_and_a_time_zone(store, tmp_path):
    clock = Clock(utc(2026, 3, 31, 21))
    app, service = alert_app(store, tmp_path, clock, alerts_yaml())
    _budget(app, period="month", limit="3.00", thresholds=[50])
    _budget(app, "globex", period="day", limit="0.20", thresholds=[100],
            timezone="America/New_York")  # fmt: skip
    insert_calls(store, [Call(utc(2026, 3, 31, 20), input=700_000)])  # 1.68 of 3.00
    # globex: 100k at 23:30 New York on the 30th = 03:30 UTC on the 31st
    insert_calls(store, [Call(utc(2026, 3, 31, 3, 30), consumer="globex", input=100_000)])
    got = _keys(service.check())
    assert got == [("acme", "2026-03-01T00:00:00+00:00", "50"),
                   ("globex", "2026-03-30T04:00:00+00:00", "100")]  # fmt: skip
    clock.now = utc(2026, 4, 1, 1)
    assert service.check() == []
    insert_calls(store, [Call(utc(2026, 4, 1, 0, 30), input=700_000)])
    assert _keys(service.check()) == [("acme", "2026-04-01T00:00:00+00:00", "50")]
    assert service.check() == []


def test_token_budget_and_feature_budget(store, tmp_path):
    clock = Clock(utc(2026, 3, 20, 12))
    app, service = alert_app(store, tmp_path, clock, alerts_yaml())
    _budget(app, limit="1000", unit="tokens", thresholds=[80])
    assert admin(app).put("/v1/budgets/acme?feature=summarize", json={
        "limit": "0.10", "unit": "USD", "period": "day", "mode": "hard",
        "thresholds": [50]}).status_code == 201  # fmt: skip
    insert_calls(store, [Call(utc(2026, 3, 20, 10), input=500, output=300)])  # 800 tokens
    insert_calls(store, [Call(utc(2026, 3, 20, 10), input=30_000, feature="summarize")])
    new = service.check()  # tokens: 80 % of 1000; summarize: 0.072 of 0.10
    assert sorted((a.feature or "", a.unit, a.threshold) for a in new) == [
        ("", "tokens", "80"), ("summarize", "USD", "50")]  # fmt: skip
    # the consumer-wide token budget counts the summarize call too: no second alert
    assert service.check() == []


ROLLING = '    - {consumer: acme, limit: "1.00", window: 24h}'


def test_rolling_window_rising_edges_once_each(store, tmp_path):
    clock = Clock(utc(2026, 3, 22, 12))
    app, service = alert_app(store, tmp_path, clock, alerts_yaml(rolling=ROLLING))
    insert_calls(store, [
        Call(utc(2026, 3, 21, 6, 15), input=300_000),   # 0.72
        Call(utc(2026, 3, 21, 20, 40), input=300_000),  # 0.72: 1.44 within 24 h
        Call(utc(2026, 3, 21, 20, 50), consumer="globex", input=900_000),  # another consumer
    ])  # fmt: skip
    [edge] = service.check()
    assert (edge.kind, edge.consumer, edge.spent) == ("rolling.threshold", "acme", Decimal("1.44"))
    # the window of 24 h ending with the call that crossed (not aligned on hours)
    assert edge.period_start == utc(2026, 3, 20, 20, 40) and edge.period_end == utc(
        2026, 3, 21, 20, 40
    )
    assert service.check() == []
    # the first call leaves the window at 06:00 on the 22nd; a new call then passes it again
    clock.now = utc(2026, 3, 22, 13)
    insert_calls(store, [Call(utc(2026, 3, 22, 12, 5), input=300_000)])
    [second] = service.check()
    assert second.period_end == utc(2026, 3, 22, 12, 5) and second.id != edge.id
    assert len(admin(app).get("/v1/alerts?kind=rolling.threshold").json()["alerts"]) == 2


def test_rolling_exactly_the_limit_is_not_more(store, tmp_path):
    rule = '    - {consumer: globex, limit: "1.00", window: 24h}'
    clock = Clock(utc(2026, 3, 25, 12))
    _, service = alert_app(store, tmp_path, clock, alerts_yaml(rolling=rule))
    insert_calls(store, [Call(utc(2026, 3, 25, 10), consumer="globex", input=500_000)])
    assert service.check() == []  # exactly 1.00 (no markup for globex)
    insert_calls(store, [Call(utc(2026, 3, 25, 11), consumer="globex", input=1)])
    [edge] = service.check()
    assert edge.spent == Decimal("1.000002")


def test_rolling_feature_rule_and_a_short_window(store, tmp_path):
    rule = '    - {consumer: acme, feature: summarize, limit: "0.50", window: 2h}'
    clock = Clock(utc(2026, 3, 22, 12))
    _, service = alert_app(store, tmp_path, clock, alerts_yaml(rolling=rule))
    insert_calls(
        store,
        [
            Call(utc(2026, 3, 22, 8, 10), input=150_000, feature="summarize"),
            Call(utc(2026, 3, 22, 10, 10), input=150_000, feature="summarize"),
            Call(utc(2026, 3, 22, 9, 0), input=900_000),
        ],
    )  # other feature
    assert service.check() == []  # 0.36 each, three hours apart: never 0.50 within 2 h
    insert_calls(store, [Call(utc(2026, 3, 22, 11, 10), input=100_000, feature="summarize")])
    [edge] = service.check()  # 09:10-11:10: 0.36 + 0.24
    assert edge.period_start == utc(2026, 3, 22, 9, 10) and edge.feature == "summarize"
    assert edge.spent == Decimal("0.60")


def test_consumer_key_sees_only_its_own_alerts(store, tmp_path):
    clock = Clock(utc(2026, 3, 20, 12))
    app, service = alert_app(store, tmp_path, clock, alerts_yaml(webhooks=["http://127.0.0.1:9/x"]))
    _budget(app)
    _budget(app, "globex", limit="0.10", thresholds=[100])
    insert_calls(
        store,
        [
            Call(utc(2026, 3, 20, 11), input=300_000),
            Call(utc(2026, 3, 20, 11), consumer="globex", input=100_000),
        ],
    )
    assert len(service.check()) == 2
    _, acme_read = create_key(store, consumer="acme", scopes=["read"])
    _, acme_reserve = create_key(store, consumer="acme", scopes=["reserve"])
    own = client(app, acme_read).get("/v1/alerts").json()["alerts"]
    assert [a["consumer"] for a in own] == ["acme"] and "deliveries" not in own[0]
    assert client(app, acme_read).get("/v1/alerts?consumer=globex").json() == {"alerts": []}
    assert client(app, acme_reserve).get("/v1/alerts").status_code == 403
    assert client(app, None).get("/v1/alerts").status_code == 401
    every = admin(app).get("/v1/alerts").json()["alerts"]
    assert sorted(a["consumer"] for a in every) == ["acme", "globex"]
    assert all(a["deliveries"][0]["state"] == "pending" for a in every)
    assert admin(app).get("/v1/alerts?consumer=globex").json()["alerts"][0]["consumer"] == "globex"


def test_raise_alert_hook_records_a_kind_once(store, tmp_path):
    clock = Clock(utc(2026, 3, 20, 12))
    _, service = alert_app(store, tmp_path, clock, alerts_yaml())
    kw = dict(consumer="acme", key="rpm:2026-03-20T12", period_start=clock.now,
              period_end=clock.now + timedelta(hours=1), limit=Decimal(60), unit="requests",
              spent=Decimal(61))  # fmt: skip
    first = service.raise_alert("rate_limit.repeated", **kw)
    assert first is not None and service.raise_alert("rate_limit.repeated", **kw) is None


def test_a_settle_makes_the_alert_loop_check_at_once(store, tmp_path):
    """The settle route pokes serve's alert thread: with the periodic check an hour
    away, the crossing a settled reservation makes is still recorded within seconds."""
    import time

    from meterline.aggregator.alerts import AlertLoop
    from tests.aggregator._budgets import reserve_body

    yaml = alerts_yaml().replace("check_interval: 1s", "check_interval: 1h")
    app, service = alert_app(store, tmp_path, None, yaml)  # the real clock
    _budget(app, period="total", limit="0.01", thresholds=[100])
    loop = AlertLoop(service)
    app.state.alert_loop = loop
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while loop.checks < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loop.checks == 1 and service.outbox.alerts(Scope.ALL) == []
        api = admin(app)
        rsv = api.post("/v1/reservations", json=reserve_body(max_tokens=100)).json()
        assert rsv["allowed"] is True, rsv
        settled = api.post(
            f"/v1/reservations/{rsv['id']}/settle",
            json={"usage": {"input": 5000, "output": 100}, "model": "gpt-4o"},
        )
        assert settled.status_code == 200, settled.text
        while not service.outbox.alerts(Scope.ALL) and time.monotonic() < deadline:
            time.sleep(0.05)
        [alert] = service.outbox.alerts(Scope.ALL)
        while loop.checks < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the check is counted once it has returned
        assert alert.threshold == "100" and loop.checks >= 2
    finally:
        loop.stop()


def test_a_rate_limit_refusing_repeatedly_is_one_alert_per_hour(store, tmp_path):
    from meterline.aggregator.alerts import AlertLoop
    from tests.aggregator._budgets import reserve_body

    limits = ("budgets:\n  rate_limits:\n"
              "    - {consumer: acme, limit: \"1\", unit: requests, per: minute}\n")  # fmt: skip
    clock = Clock(utc(2026, 3, 20, 12, 10))
    app, service = alert_app(store, tmp_path, clock,
                             limits + alerts_yaml() + "  rate_limit_refusals: 3\n")  # fmt: skip
    app.state.alert_loop = AlertLoop(service)  # not started: the route only counts
    api = admin(app)

    def reserve_all(n: int) -> list[str]:
        out = []
        for _ in range(n):
            answer = api.post("/v1/reservations", json=reserve_body())
            assert answer.status_code == 200, answer.text
            out.append(answer.json().get("policy") or "allowed")
        return out

    assert reserve_all(3) == ["allowed", "rate_limited", "rate_limited"]
    assert service.outbox.alerts(Scope.ALL) == []
    assert reserve_all(3) == ["rate_limited"] * 3  # the 3rd refusal alerts, later ones not
    [alert] = service.outbox.alerts(Scope.ALL)
    assert (alert.kind, alert.consumer, alert.unit, alert.limit) == (
        "rate_limit.repeated",
        "acme",
        "requests",
        Decimal(1),
    )
    assert alert.data["refusals"] == 3 and alert.period_start == utc(2026, 3, 20, 12)
    clock.now = utc(2026, 3, 20, 13, 30)  # the next hour: counted again from zero
    assert reserve_all(4) == ["allowed"] + ["rate_limited"] * 3
    assert len(service.outbox.alerts(Scope.ALL, kind="rate_limit.repeated")) == 2


def test_once_per_period_across_the_boundary_in_a_time_zone_day_week_month(store, tmp_path):
    """Crossings found while their period is current, then again as the previous period
    just after it ended (in New York, across the DST change of 2026-03-08 for the day):
    the same alert ids, nothing new."""
    clock = Clock(utc(2026, 3, 31, 20))  # 16:00 in New York, Tuesday 31 March
    app, service = alert_app(store, tmp_path, clock, alerts_yaml())
    for period in ("day", "week", "month"):
        assert admin(app).put(f"/v1/budgets/globex?feature={period}", json={
            "limit": "0.20", "unit": "USD", "period": period, "mode": "soft",
            "thresholds": [50], "timezone": "America/New_York"}).status_code == 201  # fmt: skip
        insert_calls(store, [Call(utc(2026, 3, 31, 19), consumer="globex", feature=period,
                                  input=100_000)])  # fmt: skip
    first = service.check()
    assert sorted((a.feature, a.period_start) for a in first) == [
        ("day", utc(2026, 3, 31, 4)), ("month", utc(2026, 3, 1, 5)),
        ("week", utc(2026, 3, 30, 4))]  # fmt: skip
    clock.now = utc(2026, 4, 1, 5)  # 01:00 on 1 April in New York: a new day and month
    assert service.check() == []
    clock.now = utc(2026, 4, 6, 5)  # a new week
    assert service.check() == []
    clock.now = utc(2026, 3, 8, 20)  # the DST day (23 h): a late call on the 7th
    insert_calls(store, [Call(utc(2026, 3, 8, 4, 30), consumer="globex", feature="day",
                              input=100_000)])  # fmt: skip
    [dst] = service.check()
    assert dst.period_start == utc(2026, 3, 7, 5) and dst.period_end == utc(2026, 3, 8, 5)
    clock.now = utc(2026, 3, 9, 4, 30)
    assert service.check() == []
