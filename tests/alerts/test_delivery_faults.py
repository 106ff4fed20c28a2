"""Webhooks that misbehave: one that hangs does not hold up the others (one deadline per
retry, not one per pending delivery), one that trickles its answer is cut at the total
deadline, and a URL pointing at the aggregator's own listeners is never sent to."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from meterline.aggregator.alerts import FAILED, PENDING, _webhooks
from tests.aggregator._budgets import Clock, admin
from tests.aggregator._calls import Call, insert_calls, utc
from tests.alerts._receiver import Receiver
from tests.alerts._support import SECRET, SECRET_ENV, alert_app, alerts_yaml

DEADLINE_S = 0.5


@pytest.fixture(autouse=True)
def _secret_and_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setattr(_webhooks, "TIMEOUT_S", DEADLINE_S)


@pytest.fixture
def receiver():
    r = Receiver(SECRET).start()
    yield r
    r.stop()


@pytest.fixture
def silent():
    """A port that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s
    s.close()


def _three_alerts(store, tmp_path, urls: list[str]):
    clock = Clock(utc(2026, 3, 20, 12))
    yaml = alerts_yaml(webhooks=urls, retry="{initial: 30s, max: 60s, attempts: 5}")
    app, service = alert_app(store, tmp_path, clock, yaml)
    assert admin(app).put("/v1/budgets/acme", json={
        "limit": "1.00", "unit": "USD", "period": "day", "mode": "soft",
        "thresholds": [25, 50, 100]}).status_code == 201  # fmt: skip
    insert_calls(store, [Call(utc(2026, 3, 20, 11), input=500_000)])  # 1.20
    assert len(service.check()) == 3
    return app, service


def _by_url(service, url: str) -> list:
    return sorted((d for d in service.outbox.deliveries() if d.url == url),
                  key=lambda d: -d.attempts)  # fmt: skip


def test_a_hanging_webhook_does_not_hold_up_the_others(store, tmp_path, receiver, silent):
    hung = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    _, service = _three_alerts(store, tmp_path, [hung, receiver.url])
    started = time.monotonic()
    service.deliver()
    took = time.monotonic() - started
    assert len(receiver.delivered()) == 3
    # one attempt at the silent webhook (cut at the deadline); its other deliveries wait
    # for that one's retry instead of costing a deadline each
    assert [(d.state, d.attempts) for d in _by_url(service, hung)] == [
        (PENDING, 1), (PENDING, 0), (PENDING, 0)]  # fmt: skip
    error = _by_url(service, hung)[0].last_error  # the deadline, or httpx's read timeout
    assert "no complete answer" in error or "ReadTimeout" in error, error
    assert took < 2 * DEADLINE_S + 1.0, took
    service.deliver()  # within the retry wait: nothing is tried again
    assert [d.attempts for d in _by_url(service, hung)] == [1, 0, 0]


def test_a_webhook_that_trickles_its_answer_is_cut_at_the_deadline(store, tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 400:
                if stop.wait(0.1):
                    return
                conn.send(bytes([byte]))

    threading.Thread(target=trickle, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    try:
        _, service = _three_alerts(store, tmp_path, [url])
        started = time.monotonic()
        service.deliver()
        took = time.monotonic() - started
        assert took < DEADLINE_S + 1.5, took  # each read came in time; the whole did not
        first = _by_url(service, url)[0]
        assert (first.state, first.attempts) == (PENDING, 1)
        assert "no complete answer" in first.last_error
    finally:
        stop.set()
        server.close()


def test_a_url_pointing_at_the_aggregator_itself_is_never_sent_to(store, tmp_path, silent):
    port = silent.getsockname()[1]
    own = [f"http://127.0.0.1:{port}/v1/alerts", f"http://localhost:{port}/?query=SELECT+1"]
    app, service = _three_alerts(store, tmp_path, own)
    service.own_ports = frozenset({port})  # what serve sets: its listeners' ports
    service.deliver()
    deliveries = service.outbox.deliveries()
    assert len(deliveries) == 6 and {d.state for d in deliveries} == {FAILED}
    assert all(d.attempts == 0 and "own listener on port" in d.last_error for d in deliveries)
    silent.settimeout(0.2)
    with pytest.raises(TimeoutError):
        silent.accept()  # nobody connected
    listed = admin(app).get("/v1/alerts").json()["alerts"]
    assert {d["state"] for a in listed for d in a["deliveries"]} == {"failed"}


def test_points_at_resolves_the_host():
    assert _webhooks.points_at("http://127.0.0.1:8123/", {8123}) == 8123
    assert _webhooks.points_at("http://localhost:8123/x", {8123}) == 8123
    assert _webhooks.points_at("http://0.0.0.0:8080/x", {8080, 8123}) == 8080
    assert _webhooks.points_at(f"http://{socket.gethostname()}:8080/", {8080}) == 8080
    assert _webhooks.points_at("http://127.0.0.1:9999/", {8123}) is None  # another port
    assert _webhooks.points_at("http://192.0.2.1:8123/", {8123}) is None  # another machine
    assert _webhooks.points_at("http://127.0.0.1/", {80}) == 80  # the scheme's port


def test_a_long_check_does_not_delay_deliveries(store, tmp_path, receiver):
    """Checks and deliveries run in two threads: while a check takes seconds (a rolling
    rule at its limit), the pending deliveries still go out."""
    from meterline.aggregator.alerts import AlertLoop

    _, service = _three_alerts(store, tmp_path, [receiver.url])
    checking = threading.Event()

    def slow_check(**_: object) -> list:
        checking.set()
        time.sleep(6)
        return []

    service.check = slow_check  # type: ignore[method-assign]
    loop = AlertLoop(service)
    loop.start()
    try:
        assert checking.wait(10)
        deadline = time.monotonic() + 4
        while len(receiver.delivered()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(receiver.delivered()) == 3 and loop.checks == 0  # the check still runs
    finally:
        loop.stop()
