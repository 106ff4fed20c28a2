"""Webhook deliveries against a real HTTP receiver that verifies each signature:
retried with backoff until 2xx under one delivery id, resumed by a new service over the
same store (a restart), repaired after a crash between the alert and its outbox rows."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from meterline.aggregator.alerts import AlertService, sign, verify
from meterline.aggregator.alerts._webhooks import backoff
from tests.aggregator._budgets import Clock, admin
from tests.aggregator._calls import Call, insert_calls, utc
from tests.alerts._receiver import Receiver
from tests.alerts._support import SECRET, SECRET_ENV, alert_app, alerts_yaml

FAST = "{initial: 1s, max: 2s, attempts: 5}"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture
def receiver():
    r = Receiver(SECRET).start()
    yield r
    r.stop()


def _drain(service: AlertService, until, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        service.deliver()
        time.sleep(0.1)


def _crossing(store, tmp_path, url: str, retry: str = FAST):
    clock = Clock(utc(2026, 3, 20, 12))
    app, service = alert_app(store, tmp_path, clock, alerts_yaml(webhooks=[url], retry=retry))
    assert admin(app).put("/v1/budgets/acme", json={
        "limit": "1.00", "unit": "USD", "period": "day", "mode": "soft", "thresholds": [50]
    }).status_code == 201  # fmt: skip
    insert_calls(store, [Call(utc(2026, 3, 20, 11), input=300_000)])
    [alert] = service.check()
    return app, service, alert


def test_500_twice_then_200_is_one_delivery_retried(store, tmp_path, receiver):
    receiver.answers = [500, 500]
    app, service, alert = _crossing(store, tmp_path, receiver.url)
    started = time.monotonic()
    _drain(service, lambda: receiver.delivered())
    assert time.monotonic() - started >= 0.5 + 1.0 - 0.2  # backoff: ≥ 0.5 s then ≥ 1 s
    assert [r.status for r in receiver.requests] == [500, 500, 200]
    assert len({r.delivery for r in receiver.requests}) == 1
    assert all(r.signed for r in receiver.requests)
    body = receiver.requests[-1].body
    assert body["id"] == receiver.requests[-1].delivery and body["type"] == "budget.threshold"
    assert body["alert"]["id"] == alert.id and body["alert"]["threshold"] == 50
    assert receiver.requests[-1].event == "budget.threshold"
    [listed] = admin(app).get("/v1/alerts").json()["alerts"]
    [d] = listed["deliveries"]
    assert (d["state"], d["attempts"], d["id"]) == ("delivered", 3, body["id"])
    for _ in range(3):  # nothing more to send, and the crossing is not new
        assert service.check() == []
        service.deliver()
    assert len(receiver.requests) == 3


def test_a_new_service_resumes_pending_deliveries(store, tmp_path, receiver):
    receiver.default = 503
    app, service, _alert = _crossing(store, tmp_path, receiver.url)
    service.deliver()
    assert [r.status for r in receiver.requests] == [503]
    service.close()  # the process stops with the delivery pending
    receiver.default = 200
    restarted = AlertService(
        store,
        app.state.config.alerts,
        pricing=service.pricing,
        budgets=service.budgets,
        currency="USD",
        clock=service._clock,
    )
    assert restarted.check() == []  # the crossing is recorded already
    _drain(restarted, lambda: receiver.delivered())
    assert len(receiver.delivered()) == 1
    assert len({r.delivery for r in receiver.requests}) == 1


def test_a_crash_between_the_alert_and_its_outbox_rows_is_repaired(store, tmp_path, receiver):
    _app, service, alert = _crossing(store, tmp_path, receiver.url)
    store.command("TRUNCATE TABLE {db}.alert_deliveries")  # as if killed between the inserts
    assert service.outbox.deliveries() == []
    assert service.outbox.repair(utc(2026, 3, 1)) == 1
    assert service.outbox.repair(utc(2026, 3, 1)) == 0
    _drain(service, lambda: receiver.delivered())
    assert [r.body["alert"]["id"] for r in receiver.requests] == [alert.id]


def test_attempts_run_out_then_failed(store, tmp_path, receiver):
    receiver.default = 500
    app, service, _ = _crossing(
        store, tmp_path, receiver.url, "{initial: 1s, max: 1s, attempts: 2}"
    )
    _drain(service, lambda: len(receiver.requests) == 2)
    service.deliver()
    [listed] = admin(app).get("/v1/alerts").json()["alerts"]
    assert listed["deliveries"][0]["state"] == "failed"
    assert "HTTP 500" in listed["deliveries"][0]["last_error"]


def test_unreachable_webhook_is_retried_not_lost(store, tmp_path, receiver):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    app, service, _ = _crossing(store, tmp_path, dead)
    service.deliver()
    [listed] = admin(app).get("/v1/alerts").json()["alerts"]
    d = listed["deliveries"][0]
    assert (d["state"], d["attempts"]) == ("pending", 1) and "Connect" in d["last_error"]


def test_signature_scheme():
    body = b'{"id":"dlv_1"}'
    header = sign("s3cret", body, 1_764_670_500)
    assert header.startswith("t=1764670500,v1=") and len(header.split("v1=")[1]) == 64
    assert verify("s3cret", body, header, now=1_764_670_500)
    assert not verify("other", body, header, now=1_764_670_500)
    assert not verify("s3cret", body + b" ", header, now=1_764_670_500)
    assert not verify("s3cret", body, header, now=1_764_670_500 + 301)  # an old replay
    forged = header.replace("t=1764670500", "t=1764670999")  # a fresh timestamp, old mac
    assert not verify("s3cret", body, forged, now=1_764_670_999)


def test_backoff_grows_and_is_jittered_within_bounds():
    one, most = timedelta(seconds=1), timedelta(seconds=60)
    lows = [backoff(n, initial=one, most=most, rng=lambda a, b: a) for n in range(1, 10)]
    highs = [backoff(n, initial=one, most=most, rng=lambda a, b: b) for n in range(1, 10)]
    assert [w.total_seconds() for w in highs] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert [w.total_seconds() for w in lows] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    spread = {backoff(5, initial=one, most=most) for _ in range(50)}
    assert len(spread) > 40 and all(8 <= w.total_seconds() <= 16 for w in spread)
