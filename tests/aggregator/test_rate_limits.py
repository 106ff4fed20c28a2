"""Rate limits (issue 11 §4): tokens / requests / money per minute or hour, per consumer
and optionally provider / model, enforced at reservation time by sliding windows — in
this process's ledger and in Redis (Debian's ``redis-server`` on a free port, skipped
when absent; ``.ci/run`` installs it).

Amounts: a reservation's tokens are input + max_tokens (1000 + 500 = 1500 by default);
its money the worst case (gpt-4o 2.00 / 8.00 per million, acme +20 %: 0.0072).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from meterline.aggregator.budgets import BudgetService, load_budgets_config
from meterline.aggregator.keys import create_key
from tests.aggregator._budgets import Clock, admin, budget_app, reserve_body
from tests.aggregator._calls import utc
from tests.aggregator._tenants import client
from tests.aggregator.pricing_config import CONFIG_YAML, write_config

T0 = utc(2026, 3, 20, 12, 0, 30)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def redis_app(store, tmp_path, clock, url):
    app = budget_app(store, tmp_path, clock)
    path = write_config(tmp_path, CONFIG_YAML)
    app.state.budgets = BudgetService(
        store, load_budgets_config(path, currency="USD"), currency="USD",
        snapshot_seconds=0, clock=clock, redis_url=url,
    )  # fmt: skip
    return app


@pytest.fixture
def app(store, tmp_path, clock):
    """The API and validation: the same code whichever ledger holds the windows."""
    return budget_app(store, tmp_path, clock)


@pytest.fixture(params=["memory", "redis"])
def each(request, store, tmp_path, clock):
    """The windows, once per ledger: this process's, and Redis's script."""
    if request.param == "memory":
        return budget_app(store, tmp_path, clock)
    return redis_app(store, tmp_path, clock, request.getfixturevalue("redis_url"))


def put(a, consumer="acme", **body):
    r = a.put(f"/v1/rate-limits/{consumer}", json=body)
    assert r.status_code in (200, 201), r.text
    return r.json()


def reserve(a, **kw):
    r = a.post("/v1/reservations", json=reserve_body(**kw))
    assert r.status_code == 200, r.text
    return r.json()


def test_requests_per_minute_slide(each, clock):
    a = admin(each)
    put(a, limit="3", unit="requests", per="minute")
    got = []
    for dt in (0, 10, 20):
        clock.now = T0 + timedelta(seconds=dt)
        got.append(reserve(a))
    assert all(g["allowed"] and g["id"] for g in got)
    clock.now = T0 + timedelta(seconds=59, microseconds=999_000)
    refused = reserve(a)
    assert refused["allowed"] is False and refused["policy"] == "rate_limited"
    assert refused["retry_after"] == pytest.approx(0.001)
    assert refused["rate_limit"]["used"] == "3" and refused["rate_limit"]["remaining"] == "0"
    assert refused["estimate"] == "1" and refused["unit"] == "requests"
    assert refused["budget"] is None and refused["degrade"] is None
    clock.now = T0 + timedelta(seconds=60)  # the first call leaves the window exactly now
    assert reserve(a)["allowed"] is True
    assert reserve(a)["allowed"] is False  # the one at +10 s is still inside


def test_no_calendar_edge_doubles_the_limit(each, clock):
    """A fixed-window limiter lets 2x through across 12:00:59 → 12:01:00; a sliding one
    does not (minute and hour edges)."""
    a = admin(each)
    put(a, limit="2", unit="requests", per="minute")
    put(a, limit="4", unit="requests", per="hour")
    clock.now = utc(2026, 3, 20, 12, 0, 59)
    assert reserve(a)["allowed"] and reserve(a)["allowed"]
    clock.now = utc(2026, 3, 20, 12, 1, 0)
    r = reserve(a)
    assert r["allowed"] is False and r["rate_limit"]["per"] == "minute"
    assert r["retry_after"] == pytest.approx(59.0)
    clock.now = utc(2026, 3, 20, 12, 59, 59)
    assert reserve(a)["allowed"] and reserve(a)["allowed"]
    clock.now = utc(2026, 3, 20, 13, 0, 0)  # the hour edge: the four are still in the hour
    r = reserve(a)
    assert r["allowed"] is False and r["rate_limit"]["per"] == "hour"
    assert r["retry_after"] == pytest.approx(59.0)  # the 12:00:59 pair leaves at 13:00:59
    clock.now = utc(2026, 3, 20, 13, 0, 59)
    assert reserve(a)["allowed"] and reserve(a)["allowed"]
    assert reserve(a)["allowed"] is False


def test_tokens_per_minute_settle_replaces_and_release_frees(each, clock):
    a = admin(each)
    put(a, limit="3000", unit="tokens", per="minute")
    first = reserve(a)  # 1500
    second = reserve(a)  # 3000
    refused = reserve(a)
    assert refused["allowed"] is False and refused["rate_limit"]["used"] == "3000"
    assert refused["estimate"] == "1500" and refused["retry_after"] == pytest.approx(60.0)
    # the first call used 900 of its 1500: 2400 in the window, still no room for 1500
    usage = {"input": 800, "output": 100}
    assert (
        a.post(f"/v1/reservations/{first['id']}/settle", json={"usage": usage}).json()["status"]
        == "settled"
    )
    assert reserve(a)["allowed"] is False
    assert a.get("/v1/rate-limits/acme").json()["rate_limits"][0]["used"] == "2400"
    # the second was never sent: its 1500 leave the window
    assert a.delete(f"/v1/reservations/{second['id']}").status_code == 204
    assert a.get("/v1/rate-limits/acme").json()["rate_limits"][0]["used"] == "900"
    assert reserve(a)["allowed"] is True
    assert reserve(a, max_tokens=100)["allowed"] is False  # 900 + 1500 + 1100 > 3000


def test_money_per_hour_and_a_call_larger_than_the_limit(each, clock):
    a = admin(each)
    put(a, limit="0.0144", unit="USD", per="hour")
    assert reserve(a)["allowed"] and reserve(a)["allowed"]  # 2 x 0.0072
    r = reserve(a)
    assert r["allowed"] is False and r["unit"] == "USD" and r["estimate"] == "0.0072"
    assert r["rate_limit"]["remaining"] == "0.00" and r["retry_after"] == pytest.approx(3600)
    huge = reserve(a, consumer="acme", max_tokens=10_000)
    assert huge["allowed"] is False and huge["retry_after"] is None
    assert "alone exceeds" in huge["reason"]
    # a model without a price cannot be checked against a money limit
    unpriced = reserve(a, model="acme-private-llm")
    assert unpriced["allowed"] is False and unpriced["policy"] == "rate_limited"
    assert "no price" in unpriced["reason"]


def test_scoped_by_provider_and_model(each, clock):
    a = admin(each)
    put(a, limit="1", unit="requests", per="minute", provider="openai", model="gpt-4o")
    assert reserve(a)["allowed"] is True
    assert reserve(a)["allowed"] is False
    assert reserve(a, model="gpt-4o-mini")["allowed"] is True  # another model
    assert reserve(a, provider="anthropic", model="claude-sonnet-4")["allowed"] is True
    assert reserve(a, consumer="zz")["allowed"] is True  # another consumer
    # with no rate limit nor budget nothing is reserved
    assert reserve(a, consumer="zz")["id"] is None


def test_budgets_are_checked_first(each, clock):
    a = admin(each)
    a.put("/v1/budgets/acme", json={"limit": "0.0072", "unit": "USD", "period": "month"})
    put(a, limit="1", unit="requests", per="minute")
    ok = reserve(a)
    assert ok["allowed"] and ok["id"]
    r = reserve(a)
    assert r["allowed"] is False and r["policy"] == "block"  # the budget refused it
    clock.now = T0 + timedelta(seconds=1)
    a.delete(f"/v1/reservations/{ok['id']}")
    assert reserve(a)["allowed"] is True  # released: room in both


def test_api_crud_and_tenancy(app, store):
    a = admin(app)
    created = a.put("/v1/rate-limits/acme", json={"limit": "60", "unit": "requests",
                                                  "per": "minute"})  # fmt: skip
    assert created.status_code == 201
    assert created.json() == {"consumer": "acme", "provider": None, "model": None, "limit": "60",
                              "unit": "requests", "per": "minute", "source": "api",
                              "used": "0", "remaining": "60"}  # fmt: skip
    again = a.put("/v1/rate-limits/acme", json={"limit": "30", "unit": "requests",
                                                "per": "minute"})  # fmt: skip
    assert again.status_code == 200 and again.json()["limit"] == "30"
    put(a, "zz", limit="5.00", unit="USD", per="hour", provider="openai")
    assert len(a.get("/v1/rate-limits").json()["rate_limits"]) == 2
    _, read = create_key(store, consumer="acme", scopes=["read"])
    mine = client(app, read)
    assert [r["consumer"] for r in mine.get("/v1/rate-limits").json()["rate_limits"]] == ["acme"]
    assert mine.get("/v1/rate-limits/zz").status_code == 404
    assert mine.put("/v1/rate-limits/acme", json={"limit": "1", "unit": "requests",
                                                  "per": "minute"}).status_code == 403  # fmt: skip
    assert a.delete("/v1/rate-limits/zz?unit=USD&per=hour").status_code == 404  # provider
    assert a.delete("/v1/rate-limits/zz?unit=USD&per=hour&provider=openai").status_code == 204
    assert a.get("/v1/rate-limits/zz").status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"limit": 1.5, "unit": "requests", "per": "minute"}, "decimal string"),
        ({"limit": "1.5", "unit": "requests", "per": "minute"}, "whole number"),
        ({"limit": "-1", "unit": "tokens", "per": "minute"}, ">= 0"),
        ({"limit": "10", "unit": "EUR", "per": "minute"}, "pricing currency 'USD'"),
        ({"limit": "10", "unit": "tokens", "per": "day"}, None),
        ({"limit": "10", "unit": "tokens", "per": "minute", "feature": "x"}, None),
        ({"limit": "10", "unit": "tokens", "per": "minute", "model": ""}, None),
    ],
)
def test_bad_rate_limits(app, body, message):
    r = admin(app).put("/v1/rate-limits/acme", json=body)
    assert r.status_code == 422, r.text
    if message:
        assert message in str(r.json()["detail"])


def test_rate_limits_of_the_configuration_file(store, tmp_path, clock):
    extra = """
budgets:
  rate_limits:
    - {consumer: acme, limit: "1", unit: requests, per: minute}
"""
    a = admin(budget_app(store, tmp_path, clock, extra))
    assert reserve(a)["allowed"] is True
    assert reserve(a)["allowed"] is False
    got = a.get("/v1/rate-limits/acme").json()["rate_limits"]
    assert got[0]["source"] == "config" and got[0]["used"] == "1"
    r = a.put("/v1/rate-limits/acme", json={"limit": "5", "unit": "requests", "per": "minute"})
    assert r.status_code == 409 and "budgets.rate_limits" in r.json()["detail"]
    assert a.delete("/v1/rate-limits/acme?unit=requests&per=minute").status_code == 409


def test_rate_limits_section_errors():
    from meterline.aggregator.budgets import BudgetError, parse_budgets_config

    with pytest.raises(BudgetError, match=r"budgets.rate_limits\[1\]: per 'week'"):
        parse_budgets_config(
            {"rate_limits": [{"consumer": "a", "limit": "1", "unit": "requests", "per": "hour"},
                             {"consumer": "a", "limit": "1", "unit": "requests", "per": "week"}]},
            currency="USD",
        )  # fmt: skip
    with pytest.raises(BudgetError, match="a second requests per hour"):
        parse_budgets_config(
            {"rate_limits": [{"consumer": "a", "limit": "1", "unit": "requests", "per": "hour"}]
             * 2}, currency="USD",
        )  # fmt: skip


def test_windows_survive_a_restart(store, tmp_path, clock):
    """A new process (the embedded ledger) reloads the last hour's reservations."""
    a = admin(budget_app(store, tmp_path, clock))
    put(a, limit="2", unit="requests", per="hour")
    kept = reserve(a)
    dropped = reserve(a)
    assert a.delete(f"/v1/reservations/{dropped['id']}").status_code == 204
    clock.now = T0 + timedelta(minutes=30)
    again = admin(budget_app(store, tmp_path, clock))  # a restart: nothing in memory
    assert reserve(again)["allowed"] is True  # the released one does not count
    r = reserve(again)
    assert r["allowed"] is False and r["retry_after"] == pytest.approx(1800)
    assert kept["allowed"]
