"""Several aggregators delivering one outbox (replicas on one ClickHouse server): each
attempt is claimed, so a receiver gets each delivery once even when both replicas find
it due at the same moment; a claim whose process died is taken over after the lease."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from meterline.aggregator.alerts import DELIVERED, PENDING, AlertService
from meterline.aggregator.alerts._outbox import CLAIM_LEASE
from tests.aggregator._budgets import Clock, admin
from tests.aggregator._calls import Call, insert_calls, utc
from tests.alerts._receiver import Receiver
from tests.alerts._support import SECRET, SECRET_ENV, alert_app, alerts_yaml


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture
def receiver():
    r = Receiver(SECRET, delay=0.4).start()  # slow: both replicas are at it at once
    yield r
    r.stop()


def _replicas(store, tmp_path, url: str) -> tuple[AlertService, AlertService]:
    clock = Clock(utc(2026, 3, 20, 12))
    app, one = alert_app(store, tmp_path, clock, alerts_yaml(webhooks=[url]))
    assert admin(app).put("/v1/budgets/acme", json={
        "limit": "1.00", "unit": "USD", "period": "day", "mode": "soft",
        "thresholds": [25, 50, 100]}).status_code == 201  # fmt: skip
    insert_calls(store, [Call(utc(2026, 3, 20, 11), input=500_000)])  # 1.20
    assert len(one.check()) == 3
    two = AlertService(store, app.state.config.alerts, pricing=one.pricing,
                       budgets=one.budgets, currency="USD", clock=clock)  # fmt: skip
    assert two.check() == []  # the same alerts, recorded once
    return one, two


def test_two_replicas_deliver_each_alert_once(store, tmp_path, receiver):
    one, two = _replicas(store, tmp_path, receiver.url)
    for _ in range(3):
        threads = [threading.Thread(target=s.deliver) for s in (one, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(receiver.requests) == 3, [r.delivery for r in receiver.requests]
    assert len({r.delivery for r in receiver.requests}) == 3
    assert {(d.state, d.attempts) for d in one.outbox.deliveries()} == {(DELIVERED, 1)}


def test_a_claim_whose_process_died_is_taken_over_after_the_lease(store, tmp_path, receiver):
    one, two = _replicas(store, tmp_path, receiver.url)
    first, second, third = one.outbox.deliveries()
    now = datetime.now(UTC)

    def claimed(d, at: datetime) -> None:  # as a replica that claimed, then died
        store.insert_columns(
            "alert_delivery_claims", [[d.id], [1], [0], ["dead"], [at]],
            ["DeliveryId", "Attempt", "Round", "Owner", "ClaimedAt"],
        )  # fmt: skip

    claimed(first, now - CLAIM_LEASE * 2)  # long ago: its process is gone
    claimed(second, now)  # just now: another replica is at it
    two.deliver()
    got = {r.delivery for r in receiver.requests}
    assert got == {first.id, third.id}
    states = {d.id: (d.state, d.attempts) for d in two.outbox.deliveries()}
    assert states[first.id] == (DELIVERED, 1) and states[second.id] == (PENDING, 0)


def test_a_replica_whose_clock_runs_ahead_cannot_bring_back_an_older_state(
    store, tmp_path, receiver
):
    import time

    one, two = _replicas(store, tmp_path, receiver.url)
    d = one.outbox.deliveries()[0]
    ahead = time.time_ns() + 3600 * 10**9  # written by a replica an hour ahead
    store.insert_columns(
        "alert_deliveries",
        [[d.id], [d.alert_id], [d.url], [ahead], [PENDING], [0], [d.next_at], [""],
         [d.payload.decode()], [datetime.now(UTC)]],
        ["Id", "AlertId", "Url", "Version", "State", "Attempts", "NextAt", "LastError",
         "Payload", "ChangedAt"],
    )  # fmt: skip
    two.deliver()
    two.deliver()
    one.deliver()
    assert len(receiver.requests) == 3
    assert {x.state for x in one.outbox.deliveries()} == {DELIVERED}
