"""Review of issue 11 (R11): what a settle may not do to a hard budget, and amounts at
the edges of what validation allows.

Amounts: gpt-4o 2.00 / 8.00 per million in / out, acme +20 % → 1000 in + 500 out = 0.0072
(tests/aggregator/pricing_config.py, the clock on 2026-03-20).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from tests._redis import start_redis
from tests.aggregator._budgets import Clock, admin, budget_app, reserve_body
from tests.aggregator._calls import utc
from tests.aggregator.test_rate_limits import redis_app

HARD = {"unit": "USD", "period": "month", "mode": "hard"}
USAGE = {"input": 1000, "output": 500}


@pytest.fixture
def clock() -> Clock:
    return Clock(utc(2026, 3, 20, 12))


@pytest.fixture
def app(store, tmp_path, clock):
    return budget_app(store, tmp_path, clock)


@pytest.fixture(params=["memory", "redis"])
def each(request, store, tmp_path, clock):
    """Once per ledger: this process's, and Redis's scripts."""
    if request.param == "memory":
        yield budget_app(store, tmp_path, clock)
        return
    url, proc = start_redis(tmp_path)
    try:
        yield redis_app(store, tmp_path, clock, url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("settled_model", ["no-such-model", "gpt-4o-unpriced-snapshot"])
def test_settle_under_an_unpriced_model_is_not_free(each, settled_model):
    """A settle naming a model without a price cannot make the call cost nothing: it is
    priced as the model that was reserved (before: money None, counted as 0.00, and the
    hard limit admitted a second full worst case)."""
    a = admin(each)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "0.0072"})  # exactly one call
    r = a.post("/v1/reservations", json=reserve_body()).json()
    assert r["allowed"]
    s = a.post(f"/v1/reservations/{r['id']}/settle",
               json={"usage": USAGE, "model": settled_model})  # fmt: skip
    assert s.status_code == 200 and s.json()["status"] == "settled"
    state = a.get("/v1/budgets/acme").json()
    assert Decimal(state["spent"]) == Decimal("0.0072") and Decimal(state["remaining"]) == 0
    again = a.post("/v1/reservations", json=reserve_body()).json()
    assert again["allowed"] is False and again["policy"] == "block"


def test_settle_under_a_priced_model_uses_its_price(app):
    """The settled model's own price still counts when it has one (a response's snapshot
    name, a cheaper model): 1000 in + 100 out of gpt-4o-mini is not gpt-4o's price."""
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "1"})
    r = a.post("/v1/reservations", json=reserve_body()).json()
    a.post(f"/v1/reservations/{r['id']}/settle", json={"usage": USAGE, "model": "o3"})
    # o3: 2.00 in, 8.00 out (reasoning 0) → same as gpt-4o here: 0.0072 with the markup
    assert Decimal(a.get("/v1/budgets/acme").json()["spent"]) == Decimal("0.0072")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/budgets/acme", {**HARD, "limit": "99999999999999999999999999999"}),
        ("/v1/budgets/acme", {**HARD, "limit": "1e30"}),
        ("/v1/budgets/acme", {**HARD, "unit": "tokens", "limit": "1e30"}),
        ("/v1/rate-limits/acme", {"limit": "99999999999999999999999999999", "unit": "tokens",
                                  "per": "minute"}),
        ("/v1/rate-limits/acme", {"limit": "1e30", "unit": "USD", "per": "hour"}),
        ("/v1/rate-limits/acme", {"limit": "123456789012345678901234567.5", "unit": "USD",
                                  "per": "hour"}),
    ],
)  # fmt: skip
def test_the_largest_limits_are_shown_not_500(app, path, body):
    """Every limit validation accepts is shown exactly and used (before: 500 from a
    28-digit quantize, after the definition was stored, for every later read too)."""
    a = admin(app)
    put = a.put(path, json=body)
    assert put.status_code in (200, 201), put.text
    assert Decimal(put.json()["limit"]) == Decimal(body["limit"])
    assert "E" not in put.json()["limit"] and "e" not in put.json()["limit"]
    assert a.get(path).status_code == 200
    listed = a.get(path.rsplit("/", 1)[0])
    assert listed.status_code == 200
    r = a.post("/v1/reservations", json=reserve_body())
    assert r.status_code == 200 and r.json()["allowed"] is True, r.text


def test_negative_zero_is_zero(app):
    a = admin(app)
    for path, body in [("/v1/budgets/acme", {**HARD, "limit": "-0"}),
                       ("/v1/rate-limits/acme", {"limit": "-0.0", "unit": "USD", "per": "hour"})]:  # fmt: skip
        shown = a.put(path, json=body).json()
        assert not shown["limit"].startswith("-") and not shown["remaining"].startswith("-")


def test_a_late_settle_counts_until_the_reservation_is_ended(each, clock):
    """Expiry is applied at the consumer's next reserve (docs/budgets.md): a settle after
    ``expires_at`` but before it counts the actual; after it, a settle is a no-op."""
    a = admin(each)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "1"})
    late = a.post("/v1/reservations", json=reserve_body(ttl_seconds=10)).json()
    gone = a.post("/v1/reservations", json=reserve_body(ttl_seconds=10)).json()
    clock.now += timedelta(seconds=11)
    settled = a.post(f"/v1/reservations/{late['id']}/settle", json={"usage": USAGE})
    assert settled.json()["status"] == "settled"
    assert a.post("/v1/reservations", json=reserve_body(max_tokens=0)).json()["allowed"]
    again = a.post(f"/v1/reservations/{gone['id']}/settle", json={"usage": USAGE})
    assert again.json()["status"] == "expired"
    state = a.get("/v1/budgets/acme").json()
    # the late one's actual (0.0072) + the new worst case (1000 in: 0.0024); not the expired
    assert Decimal(state["spent"]) == Decimal("0.0072")
    assert Decimal(state["reserved"]) == Decimal("0.0024")
