"""Leases (aggregator side): granted only far from every limit, sized from the free
headroom, counted like reservations; calls reported under them counted once.

Amounts (tests/aggregator/pricing_config.py, clock on 2026-03-20): gpt-4o 2.00 / 8.00 per
million in / out, acme +20 % → a worst case of 1000 in + 500 out is 0.0072.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from meterline.aggregator.budgets import _lease
from tests._redis import start_redis
from tests.aggregator._budgets import Clock, admin, budget_app, reserve_body
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator.test_rate_limits import redis_app

HARD = {"unit": "USD", "period": "month", "mode": "hard"}
W = Decimal("0.0072")
USAGE = {"input": 1000, "output": 250}  # (0.002 + 0.002) × 1.2 = 0.0048


@pytest.fixture
def clock() -> Clock:
    return Clock(utc(2026, 3, 20, 12))


@pytest.fixture(params=["memory", "redis"])
def app(request, store, tmp_path, clock):
    """Each case on the process's ledger and on the shared one (Redis)."""
    if request.param == "memory":
        yield budget_app(store, tmp_path, clock)
        return
    url, proc = start_redis(tmp_path)
    try:
        yield redis_app(store, tmp_path, clock, url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def state(a, query: str = "") -> dict:
    return a.get(f"/v1/budgets/acme{query}").json()


def counted_state(a) -> dict:
    """The state once the store's spans are counted: with Redis the replica that finds a
    span stored counts it twice for that one read (docs/budgets.md), so read twice."""
    state(a)
    return state(a)


def lease_of(a, **kw) -> dict:
    r = a.post("/v1/reservations", json=reserve_body(lease=True, **kw))
    assert r.status_code == 200, r.text
    return r.json()


def test_a_lease_far_from_the_limit_is_sized_and_counted(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    answer = lease_of(a)
    lease = answer["lease"]
    assert answer["allowed"] and answer["id"] == lease["id"] + ".1"
    # min(64 worst cases, 1/8 of the free 10)
    assert Decimal(lease["money"]) == 64 * W and lease["tokens"] is None
    assert lease["prices"] == {"input": "0.0000024", "output": "0.0000096"}
    assert lease["max_input_tokens"] is None and lease["use_seconds"] == _lease.USE_SECONDS
    assert Decimal(state(a)["reserved"]) == 64 * W
    # a second process's lease takes at most 1/8 of what is left
    second = lease_of(a)["lease"]
    assert Decimal(second["money"]) == 64 * W
    assert Decimal(state(a)["reserved"]) == 128 * W


def test_headroom_split_so_no_process_starves(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": str(40 * W)})
    sizes = []
    while True:
        answer = lease_of(a)
        if "lease" not in answer:
            break
        sizes.append(Decimal(answer["lease"]["money"]))
    # each takes 1/8 of the free headroom while it is >= 16 worst cases
    assert sizes and sizes[0] == 5 * W and all(s >= 2 * W for s in sizes)
    free = 40 * W - sum(sizes)
    assert free >= 14 * W
    # the call that got no lease was reserved alone (exact, per call)
    assert answer["allowed"] and not answer["id"].startswith(_lease.PREFIX)


def test_near_the_limit_no_lease_and_the_limit_is_exact(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": str(15 * W)})
    ids = [lease_of(a) for _ in range(16)]
    assert all("lease" not in r for r in ids)
    assert [r["allowed"] for r in ids] == [True] * 15 + [False]


def test_reported_calls_count_once_with_their_spans(store, app, clock):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    lease = lease_of(a)["lease"]
    lid = lease["id"]
    calls = [{"n": 1, "usage": USAGE}, {"n": 2, "usage": USAGE}]
    r = a.post(f"/v1/reservations/{lid}/calls", json={"calls": calls})
    assert r.json() == {"id": lid, "status": "reserved", "revoked": False, "recorded": 2}
    s = state(a)
    assert (s["spent"], Decimal(s["reserved"])) == ("0.0096", 64 * W - Decimal("0.0096"))
    # reported again (a retried batch): nothing changes
    r = a.post(f"/v1/reservations/{lid}/calls", json={"calls": calls})
    assert r.json()["recorded"] == 0
    assert state(a) == s
    # the spans arrive, call 1 twice: the store's money replaces each call once
    span1 = Call(clock.now, input=1000, output=250, response_id="r-1", reservation_id=lid + ".1")
    span2 = Call(clock.now, input=1000, output=250, response_id="r-2", reservation_id=lid + ".2")
    insert_calls(store, [span1, span1, span2])
    insert_calls(store, [span1])
    insert_calls(store, [Call(clock.now, input=1_000_000, response_id="r-3")])
    s = counted_state(a)
    invoice = a.get("/v1/invoices/acme?period=2026-03").json()
    # per line: input 1 002 000 → 2.4048 → 2.40, output 500 → 0.0048 → 0.00 (call 1 twice,
    # or a report also counted, would show 2.41 or 2.4048)
    assert s["spent"] == invoice["total"] == "2.40"
    assert Decimal(s["reserved"]) == 64 * W - Decimal("0.0096")
    # the lease returned: only what was spent remains
    assert a.delete(f"/v1/reservations/{lid}").status_code == 204
    assert state(a)["reserved"] == "0.00"
    r = a.post(f"/v1/reservations/{lid}/calls", json={"calls": [{"n": 3, "usage": USAGE}]})
    assert r.json()["status"] == "released" and r.json()["revoked"] is True


def test_a_span_before_its_report_counts_once(store, app, clock):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    lid = lease_of(a)["lease"]["id"]
    insert_calls(store, [Call(clock.now, input=1_000_000, reservation_id=lid + ".1")])
    a.post(f"/v1/reservations/{lid}/calls", json={"calls": [{"n": 1, "usage": {"input": 10**6}}]})
    a.delete(f"/v1/reservations/{lid}")
    s = counted_state(a)
    assert (s["spent"], s["reserved"]) == ("2.40", "0.00")


def test_a_lease_shrinks_but_never_below_zero(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    lid = lease_of(a)["lease"]["id"]
    big = {"input": 1_000_000, "output": 0}  # 2.40 > the lease's 0.4608
    a.post(f"/v1/reservations/{lid}/calls", json={"calls": [{"n": 1, "usage": big}]})
    s = state(a)
    assert (s["spent"], s["reserved"]) == ("2.40", "0.00")


def test_no_lease_under_a_rate_limit(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    a.put("/v1/rate-limits/acme", json={"limit": "1000", "unit": "requests", "per": "minute"})
    answer = lease_of(a)
    assert answer["allowed"] and "lease" not in answer


def test_a_changed_budget_revokes_the_lease(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    lid = lease_of(a)["lease"]["id"]
    ok = a.post(f"/v1/reservations/{lid}/calls", json={"calls": []}).json()
    assert ok["revoked"] is False
    a.put("/v1/budgets/acme", json={**HARD, "limit": "1"})
    assert a.post(f"/v1/reservations/{lid}/calls", json={"calls": []}).json()["revoked"] is True
    # a new rate limit too
    lid = lease_of(a)["lease"]["id"]
    a.put("/v1/rate-limits/acme", json={"limit": "1000", "unit": "requests", "per": "minute"})
    assert a.post(f"/v1/reservations/{lid}/calls", json={"calls": []}).json()["revoked"] is True


def test_an_unreturned_lease_expires(app, clock):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    lid = lease_of(a, ttl_seconds=60)["lease"]["id"]
    a.post(f"/v1/reservations/{lid}/calls", json={"calls": [{"n": 1, "usage": USAGE}]})
    clock.now += timedelta(seconds=60)
    s = state(a)
    assert (s["spent"], s["reserved"]) == ("0.0048", "0.00")


def test_token_budget_lease_and_bad_reports(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "unit": "tokens", "limit": "1000000"})
    answer = lease_of(a)
    lease = answer["lease"]
    assert lease["money"] is None and lease["tokens"] == 64 * 1500
    lid = lease["id"]
    bad = a.post(
        f"/v1/reservations/{lid}/calls", json={"calls": [{"n": 1, "usage": {"input": -1}}]}
    )
    assert bad.status_code == 422 and "call 1" in bad.text
    assert a.post(f"/v1/reservations/{lid}x/calls", json={"calls": []}).status_code == 404
    rid = a.post("/v1/reservations", json=reserve_body()).json()["id"]
    assert a.post(f"/v1/reservations/{rid}/calls", json={"calls": []}).status_code == 404


def test_soft_budget_alerts_see_the_reported_spend(app):
    from meterline.aggregator.alerts._detect import budget_crossings
    from meterline.aggregator.routes._pricing import app_pricing

    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "mode": "soft", "limit": "0.01", "thresholds": [50]})
    lease = lease_of(a)["lease"]
    assert lease["money"] is None and lease["tokens"] is None  # nothing to enforce locally
    service, pricing = app.state.budgets, app_pricing(app)
    assert budget_crossings(service, pricing, consumers={"acme"}) == []
    usage = {"input": 2000, "output": 250}  # (0.004 + 0.002) × 1.2 = 0.0072: 72 %
    a.post(f"/v1/reservations/{lease['id']}/calls", json={"calls": [{"n": 1, "usage": usage}]})
    crossed = budget_crossings(service, pricing, consumers={"acme"})
    assert [(c.threshold, c.spent) for c in crossed] == [("50", Decimal("0.0072"))]


def test_a_consumer_key_leases_and_reports_only_its_own(store, app):
    from meterline.aggregator.keys import create_key
    from tests.aggregator._tenants import client

    _, acme = create_key(store, consumer="acme", scopes=["reserve"])
    _, other = create_key(store, consumer="zz-other", scopes=["reserve"])
    admin(app).put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    lid = lease_of(client(app, acme))["lease"]["id"]
    report = {"calls": [{"n": 1, "usage": USAGE}]}
    assert client(app, other).post(f"/v1/reservations/{lid}/calls", json=report).status_code == 404
    assert client(app, other).delete(f"/v1/reservations/{lid}").status_code == 404
    assert state(admin(app))["spent"] == "0.00"
    mine = client(app, acme).post(f"/v1/reservations/{lid}/calls", json=report)
    assert mine.json()["recorded"] == 1 and state(admin(app))["spent"] == "0.0048"
    assert client(app, acme).delete(f"/v1/reservations/{lid}").status_code == 204
    # ended: another consumer still gets 404, not the status
    assert client(app, other).post(f"/v1/reservations/{lid}/calls", json=report).status_code == 404


def test_a_report_repeated_after_a_restart_counts_once(store, tmp_path, clock):
    """The process ledger: the first report's call was counted (its span stored) and the
    aggregator restarted; the same report again records nothing (Redis keeps a set)."""
    first = budget_app(store, tmp_path, clock)
    a = admin(first)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "10"})
    lid = lease_of(a)["lease"]["id"]
    report = {"calls": [{"n": 1, "usage": USAGE}]}
    assert a.post(f"/v1/reservations/{lid}/calls", json=report).json()["recorded"] == 1
    span = Call(clock.now, input=1000, output=250, response_id="r-1", reservation_id=lid + ".1")
    insert_calls(store, [span])
    before = state(a)  # the call is counted: its settled reservation dropped
    assert Decimal(before["reserved"]) == 64 * W - Decimal("0.0048")
    again = admin(budget_app(store, tmp_path, clock))  # a restart: the lease is reloaded
    assert again.post(f"/v1/reservations/{lid}/calls", json=report).json()["recorded"] == 0
    after = state(again)
    assert (after["spent"], after["reserved"]) == (before["spent"], before["reserved"])
