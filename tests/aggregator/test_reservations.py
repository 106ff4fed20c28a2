"""Reservations: worst-case amounts, hard limits, degrade, settle once, expiry, tenancy.

Hand-computed amounts (tests/aggregator/pricing_config.py, the clock on 2026-03-20):
gpt-4o 2.00 / 8.00 per million in / out, acme +20 % → 1000 in + 500 out = 0.0072.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from meterline.aggregator.keys import create_key
from tests.aggregator._budgets import Clock, admin, budget_app, reserve_body
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator._tenants import client

HARD = {"unit": "USD", "period": "month", "mode": "hard"}


@pytest.fixture
def clock() -> Clock:
    return Clock(utc(2026, 3, 20, 12))


@pytest.fixture
def app(store, tmp_path, clock):
    return budget_app(store, tmp_path, clock)


def state(a, query: str = "") -> dict:
    return a.get(f"/v1/budgets/acme{query}").json()


@pytest.mark.parametrize(
    ("body", "amount"),
    [
        (reserve_body(), "0.0072"),
        # cliff tier chosen from the estimated input: above 200000 every token at 6.00/22.50
        (reserve_body(consumer="zz", provider="anthropic", model="claude-sonnet-4-20250514",
                      input_tokens=250_000, max_tokens=1000), "1.5225"),
        (reserve_body(consumer="zz", provider="anthropic", model="claude-sonnet-4",
                      input_tokens=200_000, max_tokens=1000), "0.615"),
        # output may all be reasoning: priced at the higher reasoning price (9 > 8)
        (reserve_body(consumer="zz", model="o3", input_tokens=1000, max_tokens=1000), "0.011"),
        # the old price before 2026-03-16 is not the one in force now
        (reserve_body(consumer="zz", input_tokens=1_000_000, max_tokens=0), "2"),
    ],
)  # fmt: skip
def test_worst_case_amount(app, body, amount):
    a = admin(app)
    a.put(f"/v1/budgets/{body['consumer']}", json={**HARD, "limit": "100"})
    r = a.post("/v1/reservations", json=body).json()
    assert r["allowed"] and r["id"].startswith("rsv_")
    assert Decimal(r["amount"]) == Decimal(amount)
    assert Decimal(a.get(f"/v1/budgets/{body['consumer']}").json()["reserved"]) == Decimal(amount)


def test_no_budget_nothing_reserved(app):
    r = admin(app).post("/v1/reservations", json=reserve_body()).json()
    assert r["allowed"] is True and r["id"] is None


def test_hard_limit_blocks_and_soft_does_not(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "0.0144"})  # exactly two
    a.put("/v1/budgets/acme?feature=chat", json={**HARD, "limit": "0.01", "mode": "soft"})
    first = a.post("/v1/reservations", json=reserve_body(feature="chat")).json()
    second = a.post("/v1/reservations", json=reserve_body(feature="chat")).json()
    assert first["allowed"] and second["allowed"]  # the soft feature budget is passed
    assert Decimal(first["headroom"]) == Decimal("0.0072")
    third = a.post("/v1/reservations", json=reserve_body()).json()
    assert third["allowed"] is False and third["policy"] == "block"
    assert third["estimate"] == "0.0072"
    assert third["budget"]["feature"] is None and third["budget"]["reserved"] == "0.0144"
    assert state(a)["remaining"] == "0.00"
    chat = state(a, "?feature=chat")
    assert chat["reserved"] == "0.0144" and Decimal(chat["remaining"]) < 0  # soft: reported
    # releasing one makes room for exactly one more
    assert a.delete(f"/v1/reservations/{first['id']}").status_code == 204
    assert a.post("/v1/reservations", json=reserve_body()).json()["allowed"]
    assert not a.post("/v1/reservations", json=reserve_body()).json()["allowed"]


def test_every_applicable_budget_must_fit(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "100"})
    a.put("/v1/budgets/acme?feature=chat", json={**HARD, "limit": "0.01", "period": "day"})
    assert a.post("/v1/reservations", json=reserve_body(feature="chat")).json()["allowed"]
    denied = a.post("/v1/reservations", json=reserve_body(feature="chat")).json()
    assert not denied["allowed"] and denied["budget"]["feature"] == "chat"
    # another feature is only under the consumer-wide budget
    assert a.post("/v1/reservations", json=reserve_body(feature="other")).json()["allowed"]


def test_unpriced_model_never_passes_a_hard_money_budget(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "100"})
    r = a.post("/v1/reservations", json=reserve_body(model="mystery-1")).json()
    assert r["allowed"] is False and "no price" in r["reason"]
    a.put("/v1/budgets/acme", json={**HARD, "limit": "100", "mode": "soft"})
    assert a.post("/v1/reservations", json=reserve_body(model="mystery-1")).json()["allowed"]


def test_degrade_answers_what_fits(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "0.01", "policy": "degrade",
          "degrade": {"max_tokens": True, "model": {"gpt-4o": "gpt-4o-mini"}}})  # fmt: skip
    r = a.post("/v1/reservations", json=reserve_body(max_tokens=1000)).json()
    # 0.0024 for the input; (0.01 - 0.0024) / 0.0000096 = 791.6…
    assert r["allowed"] is False and r["policy"] == "degrade"
    assert r["degrade"] == {"max_tokens": 791, "model": "gpt-4o-mini"}
    assert a.post("/v1/reservations", json=reserve_body(max_tokens=792)).json()["allowed"] is False
    assert a.post("/v1/reservations", json=reserve_body(max_tokens=791)).json()["allowed"]
    r = a.post("/v1/reservations", json=reserve_body(max_tokens=1)).json()
    assert r["degrade"] == {"max_tokens": None, "model": "gpt-4o-mini"}  # nothing fits now


def test_checkpoint_policy_is_reported(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "0.001", "policy": "checkpoint"})
    r = a.post("/v1/reservations", json=reserve_body()).json()
    assert (r["allowed"], r["policy"], r["degrade"]) == (False, "checkpoint", None)


def test_settle_counts_once_until_and_after_the_span(store, app, clock):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    rid = a.post("/v1/reservations", json=reserve_body(max_tokens=100_000)).json()["id"]
    assert state(a)["reserved"] == "0.9624"
    usage = {"input": 1000, "output": 250, "cache_read": 0, "cache_write": 0, "reasoning": 0}
    settled = a.post(f"/v1/reservations/{rid}/settle", json={"usage": usage})
    assert settled.json() == {"id": rid, "status": "settled"}
    # until the span is stored the actual amount counts as spent: (0.002 + 0.002) × 1.2
    s = state(a)
    assert (s["spent"], s["reserved"]) == ("0.0048", "0.00")
    again = a.post(f"/v1/reservations/{rid}/settle", json={"usage": {"input": 9, "output": 9}})
    assert again.json()["status"] == "settled" and state(a)["spent"] == "0.0048"
    # the span arrives, twice (a retried export): the invoice's money replaces it, once
    span = Call(clock.now, input=1000, output=250, response_id="r-1", reservation_id=rid)
    insert_calls(store, [span, span])
    s = state(a)
    invoice = a.get("/v1/invoices/acme?period=2026-03").json()
    assert s["spent"] == invoice["total"] == "0.00"  # rounded per line: below a cent
    insert_calls(store, [Call(clock.now, input=1_000_000, response_id="r-2")])
    invoice = a.get("/v1/invoices/acme?period=2026-03").json()
    assert state(a)["spent"] == invoice["total"] == "2.40"
    assert a.post(f"/v1/reservations/{rid}/settle", json={"usage": usage}).json()[
        "status"] == "counted"  # fmt: skip


def test_span_before_settle(store, app, clock):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    rid = a.post("/v1/reservations", json=reserve_body()).json()["id"]
    insert_calls(store, [Call(clock.now, input=1_000_000, reservation_id=rid)])
    assert (state(a)["spent"], state(a)["reserved"]) == ("2.40", "0.00")
    r = a.post(f"/v1/reservations/{rid}/settle", json={"usage": {"input": 1_000_000}})
    assert r.json()["status"] == "counted" and state(a)["spent"] == "2.40"


def test_settle_validates_usage(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    rid = a.post("/v1/reservations", json=reserve_body()).json()["id"]
    for usage, message in [
        ({"input": -1}, "usage.input"),
        ({"input": "12"}, "usage.input"),
        ({"input": 1.5}, "usage.input"),
        ({"input": 10, "cache_read": 11}, "subsets"),
        ({"output": 1, "reasoning": 2}, "subset"),
        ({"inputs": 1}, "unknown usage field"),
    ]:
        r = a.post(f"/v1/reservations/{rid}/settle", json={"usage": usage})
        assert r.status_code == 422 and message in r.text, (usage, r.text)
    assert state(a)["reserved"] == "0.0072"  # nothing changed


def test_expiry(app, clock):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "0.0072"})
    rid = a.post("/v1/reservations", json=reserve_body(ttl_seconds=60)).json()["id"]
    assert not a.post("/v1/reservations", json=reserve_body()).json()["allowed"]
    clock.now += timedelta(seconds=59)
    assert state(a)["reserved"] == "0.0072"
    clock.now += timedelta(seconds=1)
    assert state(a)["reserved"] == "0.00"
    assert a.post("/v1/reservations", json=reserve_body()).json()["allowed"]
    # settling the expired one changes nothing (its span, when stored, is counted)
    r = a.post(f"/v1/reservations/{rid}/settle", json={"usage": {"input": 5, "output": 5}})
    assert r.json()["status"] == "expired" and state(a)["spent"] == "0.00"
    r = a.post("/v1/reservations", json=reserve_body(ttl_seconds=3601))
    assert r.status_code == 422 and "3600" in r.text


def test_unknown_and_foreign_reservations(store, app):
    _, acme = create_key(store, consumer="acme", scopes=["reserve"])
    _, acme_read = create_key(store, consumer="acme", scopes=["read"])
    _, other = create_key(store, consumer="zz-other", scopes=["reserve", "read"])
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    mine = client(app, acme).post("/v1/reservations", json=reserve_body())
    assert mine.status_code == 200 and mine.json()["allowed"]
    rid = mine.json()["id"]
    # a key reserves only for its consumer, and cannot read another's budget
    theirs = client(app, other).post("/v1/reservations", json=reserve_body())
    assert theirs.status_code == 403
    assert client(app, other).get("/v1/budgets/acme").status_code == 404
    assert client(app, acme_read).post("/v1/reservations", json=reserve_body()).status_code == 403
    usage = {"usage": {"input": 1, "output": 1}}
    assert client(app, other).post(f"/v1/reservations/{rid}/settle", json=usage).status_code == 404
    assert client(app, other).delete(f"/v1/reservations/{rid}").status_code == 404
    assert a.post("/v1/reservations/rsv_nope/settle", json=usage).status_code == 404
    assert a.delete("/v1/reservations/rsv_nope").status_code == 404
    assert client(app, acme).post(f"/v1/reservations/{rid}/settle", json=usage).json()[
        "status"] == "settled"  # fmt: skip
    # ended: another consumer still gets 404, not the status
    assert client(app, other).post(f"/v1/reservations/{rid}/settle", json=usage).status_code == 404


def test_max_tokens_absent(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "100"})
    # gpt-4o's context window (catalogue): the output cannot exceed what is left of it
    r = a.post("/v1/reservations", json=reserve_body(max_tokens=None))
    assert r.status_code == 200 and r.json()["allowed"], r.text
    assert Decimal(r.json()["amount"]) > Decimal("0.0072")
    r = a.post("/v1/reservations", json=reserve_body(model="o3-custom-x", max_tokens=None))
    assert r.status_code == 422 and "max_tokens is required" in r.text
