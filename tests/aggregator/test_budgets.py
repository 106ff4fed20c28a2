"""Budgets through the API: keys of each kind, spent == invoice, periods, tokens.

Amounts are worked out by hand from tests/aggregator/pricing_config.py: gpt-4o from
2026-03-16 costs 2.00 / 8.00 per million input / output tokens, acme pays 20 % markup.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from meterline.aggregator.keys import create_key, revoke_key
from tests.aggregator._budgets import Clock, admin, budget_app, reserve_body
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator._tenants import client

MONTH = {"limit": "25.00", "unit": "USD", "period": "month", "mode": "hard",
         "thresholds": [50, 80, 100]}  # fmt: skip


@pytest.fixture
def clock() -> Clock:
    return Clock(utc(2026, 3, 20, 12))


def test_put_get_delete_by_key_kind(store, tmp_path, clock):
    app = budget_app(store, tmp_path, clock)
    _, acme_read = create_key(store, consumer="acme", scopes=["read"])
    _, acme_reserve = create_key(store, consumer="acme", scopes=["reserve"])
    _, other_read = create_key(store, consumer="zz-other", scopes=["read"])
    gone, revoked = create_key(store, consumer="acme", scopes=["read"])
    revoke_key(store, gone.id)
    a = admin(app)

    put = a.put("/v1/budgets/acme", json=MONTH)
    assert put.status_code == 201, put.text
    body = put.json()
    assert body["consumer"] == "acme" and body["feature"] is None
    assert (body["limit"], body["unit"], body["period"], body["mode"]) == (
        "25.00", "USD", "month", "hard")  # fmt: skip
    assert (body["spent"], body["reserved"], body["remaining"]) == ("0.00", "0.00", "25.00")
    assert (body["period_start"], body["period_end"]) == (
        "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z")  # fmt: skip
    assert a.put("/v1/budgets/acme", json={**MONTH, "limit": "30"}).status_code == 200
    assert a.put("/v1/budgets/acme?feature=summarize", json=MONTH).status_code == 201

    own = client(app, acme_read).get("/v1/budgets/acme")
    assert own.status_code == 200 and own.json()["limit"] == "30.00"
    assert client(app, acme_read).get("/v1/budgets/acme?feature=summarize").status_code == 200
    listed = client(app, acme_read).get("/v1/budgets").json()["budgets"]
    assert {(b["consumer"], b["feature"]) for b in listed} == {
        ("acme", None), ("acme", "summarize")}  # fmt: skip
    # another consumer's key: 404 for acme's (same as for nobody's), its own list empty
    assert client(app, other_read).get("/v1/budgets/acme").status_code == 404
    assert client(app, other_read).get("/v1/budgets/nobody").status_code == 404
    assert client(app, other_read).get("/v1/budgets").json() == {"budgets": []}
    # a key without read, a revoked key, no key
    assert client(app, acme_reserve).get("/v1/budgets/acme").status_code == 403
    assert client(app, revoked).get("/v1/budgets/acme").status_code == 401
    assert client(app).get("/v1/budgets/acme").status_code == 401
    # only the admin changes budgets
    assert client(app, acme_read).put("/v1/budgets/acme", json=MONTH).status_code == 403
    assert client(app, acme_read).delete("/v1/budgets/acme").status_code == 403

    assert a.put("/v1/budgets/acme", json={**MONTH, "period": "day"}).status_code == 201
    several = a.get("/v1/budgets/acme")
    assert several.status_code == 400 and "?period=" in several.json()["detail"]
    assert a.get("/v1/budgets/acme?period=day").json()["period"] == "day"
    assert a.delete("/v1/budgets/acme?period=day").status_code == 204
    assert a.get("/v1/budgets/acme?period=day").status_code == 404
    assert a.get("/v1/budgets/acme").json()["period"] == "month"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"limit": 25.0}, "decimal string"),
        ({"limit": "-1"}, ">= 0"),
        ({"limit": "NaN"}, "finite"),
        ({"unit": "EUR"}, "pricing currency 'USD'"),
        ({"unit": "tokens", "limit": "10.5"}, "whole number"),
        ({"period": "year"}, "period"),
        ({"mode": "strict"}, "mode"),
        ({"policy": "degrade"}, "needs a degrade section"),
        ({"timezone": "Mars/Olympus"}, "unknown"),
        ({"thresholds": [50, "x"]}, "thresholds"),
        ({"degrade": {"model": {"gpt-4o": 3}}}, "degrade"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_put_rejects_bad_budgets(store, tmp_path, clock, change, message):
    app = budget_app(store, tmp_path, clock)
    response = admin(app).put("/v1/budgets/acme", json={**MONTH, **change})
    assert response.status_code == 422, response.text
    assert message in response.text
    assert admin(app).get("/v1/budgets").json() == {"budgets": []}


MARCH = [
    # acme, summarize: 1000 in / 500 out at the new price → 0.002 + 0.004
    Call(utc(2026, 3, 17), input=1_000_000, output=100_000, feature="summarize"),
    Call(utc(2026, 3, 18), input=333_333, output=77_777, feature="chat"),
    Call(utc(2026, 3, 18), input=333_333, output=77_777, feature="chat", response_id="twice"),
    Call(utc(2026, 3, 18), input=333_333, output=77_777, feature="chat", response_id="twice"),
    Call(utc(2026, 3, 2), input=123_457, output=1_001),  # the old price, no feature
    Call(utc(2026, 3, 9), input=5_000, error="500"),  # failed: not billed
    Call(utc(2026, 3, 9), model="mystery-1", input=5_000),  # unpriced: not in the total
    Call(utc(2026, 2, 28, 23, 59, 59), input=9_000_000),  # the month before
    Call(utc(2026, 4, 1), input=9_000_000),  # the month after
    Call(utc(2026, 3, 10), consumer="beta", input=7_000_000),
]  # fmt: skip


def test_spent_is_the_invoice_total(store, tmp_path, clock):
    insert_calls(store, MARCH)
    app = budget_app(store, tmp_path, clock)
    a = admin(app)
    a.put("/v1/budgets/acme", json={**MONTH, "limit": "100"})
    for feature in ("summarize", "chat", "none-yet"):
        a.put(f"/v1/budgets/acme?feature={feature}", json={**MONTH, "limit": "100"})
    invoice = a.get("/v1/invoices/acme?period=2026-03").json()
    budget = a.get("/v1/budgets/acme").json()
    assert budget["spent"] == invoice["total"]
    assert Decimal(invoice["markup"]) > 0  # the plan's markup is in both
    # by hand: lines (rounded per line) + 20 % markup
    summarize = Decimal("2.00") + Decimal("0.80")  # 1M × 2.00, 100k × 8.00
    assert Decimal(a.get("/v1/budgets/acme?feature=summarize").json()["spent"]) == (
        summarize * Decimal("1.2"))  # fmt: skip
    assert a.get("/v1/budgets/acme?feature=none-yet").json()["spent"] == "0.00"
    beta = Decimal(a.get("/v1/invoices/beta?period=2026-03").json()["total"])
    assert beta > 0  # beta's usage is not acme's
    a.put("/v1/budgets/beta", json={**MONTH, "limit": "100"})
    assert Decimal(a.get("/v1/budgets/beta").json()["spent"]) == beta


def test_tokens_budget_counts_billable_tokens_once(store, tmp_path, clock):
    insert_calls(store, MARCH)
    app = budget_app(store, tmp_path, clock)
    a = admin(app)
    a.put("/v1/budgets/acme?feature=chat", json={"limit": "1000000", "unit": "tokens",
                                                   "period": "month"})  # fmt: skip
    state = a.get("/v1/budgets/acme?feature=chat").json()
    assert state["spent"] == str(2 * (333_333 + 77_777))  # the duplicate once
    a.put("/v1/budgets/acme", json={"limit": "100000000", "unit": "tokens", "period": "month"})
    expected = 1_100_000 + 2 * 411_110 + 124_458 + 5_000  # unpriced counts, failed does not
    assert a.get("/v1/budgets/acme").json()["spent"] == str(expected)
    # a reservation in tokens: input + max_tokens
    r = a.post("/v1/reservations", json=reserve_body(feature="chat", input_tokens=100,
                                                       max_tokens=50)).json()  # fmt: skip
    assert r["allowed"] and r["unit"] == "tokens" and r["amount"] == "150"
    assert a.get("/v1/budgets/acme?feature=chat").json()["reserved"] == "150"


@pytest.mark.parametrize(
    ("period", "tz", "at", "start", "end"),
    [
        ("day", "UTC", utc(2026, 3, 20, 23, 59, 59), utc(2026, 3, 20), utc(2026, 3, 21)),
        ("day", "UTC", utc(2026, 3, 21), utc(2026, 3, 21), utc(2026, 3, 22)),
        # 2026-03-20 is a Friday: the ISO week starts on Monday the 16th
        ("week", "UTC", utc(2026, 3, 20, 12), utc(2026, 3, 16), utc(2026, 3, 23)),
        ("week", "UTC", utc(2026, 3, 22, 23, 59, 59), utc(2026, 3, 16), utc(2026, 3, 23)),
        ("month", "UTC", utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 1), utc(2027, 1, 1)),
        ("month", "UTC", utc(2028, 2, 29, 12), utc(2028, 2, 1), utc(2028, 3, 1)),
        # Tokyo is UTC+9: its day starts at 15:00 UTC the day before
        ("day", "Asia/Tokyo", utc(2026, 3, 20, 14, 59), utc(2026, 3, 19, 15), utc(2026, 3, 20, 15)),
        ("day", "Asia/Tokyo", utc(2026, 3, 20, 15), utc(2026, 3, 20, 15), utc(2026, 3, 21, 15)),
        # India's half-hour offset, and a day 23 hours long (Paris, spring forward)
        ("day", "Asia/Kolkata", utc(2026, 3, 20), utc(2026, 3, 19, 18, 30), utc(2026, 3, 20, 18, 30)),
        ("day", "Europe/Paris", utc(2026, 3, 29, 12), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),
        ("month", "America/New_York", utc(2026, 3, 1, 4), utc(2026, 2, 1, 5), utc(2026, 3, 1, 5)),
        ("total", "UTC", utc(2026, 3, 20), None, None),
    ],
)  # fmt: skip
def test_period_windows(period, tz, at, start, end):
    from meterline.aggregator._instants import EARLIEST, LATEST
    from meterline.aggregator.budgets import window

    got = window(period, at, tz)
    assert got == ((start or EARLIEST), (end or LATEST))
    assert got[0] <= at < got[1]


def test_day_budget_rolls_over_at_midnight(store, tmp_path, clock):
    """Spend of the last second of a day stays in that day; the next day starts at 0."""
    insert_calls(store, [Call(utc(2026, 3, 20, 23, 59, 59), input=1_000_000)])
    clock.now = utc(2026, 3, 20, 23, 59, 59)
    app = budget_app(store, tmp_path, clock)
    a = admin(app)
    a.put("/v1/budgets/acme", json={**MONTH, "period": "day", "limit": "10"})
    assert a.get("/v1/budgets/acme").json()["spent"] == "2.40"
    clock.now = utc(2026, 3, 21)
    state = a.get("/v1/budgets/acme").json()
    assert (state["spent"], state["period_start"]) == ("0.00", "2026-03-21T00:00:00Z")
    # the same instants in Tokyo: both in the day that started 2026-03-20T15:00Z
    a.put("/v1/budgets/acme", json={**MONTH, "period": "day", "limit": "10",
                                    "timezone": "Asia/Tokyo"})  # fmt: skip
    state = a.get("/v1/budgets/acme").json()
    assert (state["spent"], state["period_start"]) == ("2.40", "2026-03-20T15:00:00Z")


def test_budgets_section_of_the_configuration(store, tmp_path, clock):
    extra = """
budgets:
  timezone: Asia/Tokyo
  reservations: {ttl_seconds: 60, max_ttl_seconds: 120}
  limits:
    - {consumer: acme, limit: "5.00", unit: USD, period: day}
    - {consumer: acme, feature: chat, limit: "1000", unit: tokens, period: total, mode: soft}
"""
    app = budget_app(store, tmp_path, clock, extra)
    a = admin(app)
    day = a.get("/v1/budgets/acme?period=day").json()
    assert (day["limit"], day["period_start"], day["source"]) == (
        "5.00", "2026-03-19T15:00:00Z", "config")  # fmt: skip
    assert a.get("/v1/budgets/acme?feature=chat").json()["mode"] == "soft"
    assert a.put("/v1/budgets/acme", json={**MONTH, "period": "day"}).status_code == 409
    assert a.delete("/v1/budgets/acme?period=day").status_code == 409
    r = a.post("/v1/reservations", json=reserve_body(ttl_seconds=121))
    assert r.status_code == 422 and "120" in r.text
    r = a.post("/v1/reservations", json=reserve_body()).json()
    assert r["expires_at"] == "2026-03-20T12:01:00Z"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("budgets: {limits: [{consumer: acme, limit: 5.0, unit: USD, period: day}]}",
         "budgets.limits[0]: limit 5.0 must be a decimal string"),
        ("budgets: {limit: []}", "unknown key 'limit'"),
        ("budgets: {reservations: {ttl_seconds: 0}}", "ttl_seconds 0"),
        ("budgets: {limits: [{limit: '5', unit: USD, period: day}]}", "needs a consumer"),
        ("budgets: {timezone: Nowhere/Else}", "timezone"),
    ],
)  # fmt: skip
def test_budgets_section_errors(tmp_path, section, message):
    from meterline.aggregator.budgets import BudgetError, load_budgets_config
    from tests.aggregator.pricing_config import CONFIG_YAML, write_config

    path = write_config(tmp_path, CONFIG_YAML + section + "\n")
    with pytest.raises(BudgetError) as info:
        load_budgets_config(path, currency="USD")
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_state_survives_a_new_app(store, tmp_path, clock):
    """Budgets and live reservations are in the store: a restarted server keeps them."""
    app = budget_app(store, tmp_path, clock)
    a = admin(app)
    a.put("/v1/budgets/acme", json={**MONTH, "limit": "0.01"})
    first = a.post("/v1/reservations", json=reserve_body()).json()
    assert first["allowed"] and first["amount"] == "0.0072"
    again = admin(budget_app(store, tmp_path, clock))
    state = again.get("/v1/budgets/acme").json()
    assert (state["limit"], state["reserved"]) == ("0.01", "0.0072")
    assert not again.post("/v1/reservations", json=reserve_body()).json()["allowed"]
    assert again.post(f"/v1/reservations/{first['id']}/settle",
                      json={"usage": {"input": 1000, "output": 10}}).status_code == 200  # fmt: skip
    clock.now += timedelta(days=40)  # a later month: nothing reserved there
    assert again.get("/v1/budgets/acme").json()["reserved"] == "0.00"


@pytest.mark.parametrize("period", ["month", "day", "total"])
def test_a_feature_budget_reads_the_feature_filtered_invoice_from_rated_usage(
    store, tmp_path, clock, monkeypatch, period
):
    """A feature budget's ``spent`` is the feature-filtered invoice total, read from the
    rated table once its months are rated (the on-the-fly path is switched off to prove
    it), and equal to the feature-filtered invoice rated on the fly to the cent."""
    from meterline.aggregator.invoices import _service, between
    from meterline.aggregator.pricing import load_pricing
    from meterline.aggregator.rated import ensure_rated
    from meterline.aggregator.tenancy import Scope
    from tests.aggregator.pricing_config import CONFIG_YAML, write_config

    day = [  # the budget day of the clock (2026-03-20 UTC), and the day before
        Call(utc(2026, 3, 20, 0), input=250_001, output=3_333, feature="chat"),
        Call(utc(2026, 3, 20, 11, 59), input=100_001, output=7_777, feature="summarize"),
        Call(utc(2026, 3, 19, 23, 59, 59), input=9_999, output=99, feature="chat"),
    ]
    insert_calls(store, [*MARCH, *day])
    pricing = load_pricing(write_config(tmp_path, CONFIG_YAML))
    ensure_rated(store, pricing)
    app = budget_app(store, tmp_path, clock)
    a = admin(app)
    spans = {"month": between(utc(2026, 3, 1), utc(2026, 4, 1)),
             "day": between(utc(2026, 3, 20), utc(2026, 3, 21)),
             "total": between(utc(1900, 1, 1), utc(2262, 4, 11))}  # fmt: skip
    expected = {
        f: _service.rate_invoices_on_the_fly(
            store, pricing, spans[period], scope=Scope.ALL, consumer="acme", feature=f
        )["acme"].total
        for f in ("chat", "summarize", "none-yet")
    }

    def no_fly(*args, **kwargs):
        raise AssertionError("rated on the fly: the feature filter did not reach the table")

    monkeypatch.setattr(_service, "rate_invoices_on_the_fly", no_fly)
    for feature, total in expected.items():
        a.put(f"/v1/budgets/acme?feature={feature}", json={**MONTH, "period": period})
        got = a.get(f"/v1/budgets/acme?feature={feature}")
        assert got.status_code == 200, got.text
        spent = got.json()["spent"]
        assert Decimal(spent) == total, feature
    assert expected["chat"] > 0 and expected["summarize"] > 0
    assert expected["none-yet"] == 0
