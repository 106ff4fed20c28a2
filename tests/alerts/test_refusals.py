"""``rate_limit.repeated`` counted where every replica sees it: two aggregator services on
one store, a restart between refusals, and two replicas on one Redis — one alert, at
the N-th refusal of the hour overall."""

from __future__ import annotations

from decimal import Decimal

import pytest

from meterline.aggregator.alerts import AlertLoop, AlertService
from meterline.aggregator.routes._pricing import app_pricing
from meterline.aggregator.tenancy import Scope
from tests.aggregator._budgets import Clock, admin, reserve_body
from tests.aggregator._calls import utc
from tests.alerts._support import SECRET, SECRET_ENV, alert_app, alerts_yaml

LIMITS = (
    'budgets:\n  rate_limits:\n    - {consumer: acme, limit: "1", unit: requests, per: minute}\n'
)
YAML = LIMITS + alerts_yaml() + "  rate_limit_refusals: 3\n"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def _aggregator(store, tmp_path, clock, name: str):
    """One aggregator process: its API (own ledger) and its alert service."""
    (tmp_path / name).mkdir(exist_ok=True)
    app, service = alert_app(store, tmp_path / name, clock, YAML)
    app.state.alert_loop = AlertLoop(service)  # not started: the reserve route counts
    return app, service


def _reserve(app) -> str:
    answer = admin(app).post("/v1/reservations", json=reserve_body())
    assert answer.status_code == 200, answer.text
    return answer.json().get("policy") or "allowed"


def _repeated(service) -> list:
    return service.outbox.alerts(Scope.ALL, kind="rate_limit.repeated")


def test_two_aggregators_on_one_store_alert_once_at_the_nth_refusal(store, tmp_path):
    clock = Clock(utc(2026, 3, 20, 12, 10))
    one, s1 = _aggregator(store, tmp_path, clock, "one")
    two, s2 = _aggregator(store, tmp_path, clock, "two")
    assert [_reserve(one), _reserve(two)] == ["allowed", "allowed"]  # a ledger each
    assert [_reserve(one), _reserve(two)] == ["rate_limited"] * 2  # refusals 1, 2
    assert _repeated(s1) == []
    assert _reserve(one) == "rate_limited"  # the 3rd refusal of the hour, overall
    [alert] = _repeated(s1)
    assert (alert.consumer, alert.limit, alert.data["refusals"]) == ("acme", Decimal(1), 3)
    assert [_reserve(two), _reserve(one), _reserve(two)] == ["rate_limited"] * 3
    assert len(_repeated(s2)) == 1
    clock.now = utc(2026, 3, 20, 13, 5)  # the next hour counts from zero
    assert [_reserve(one), _reserve(two)] == ["allowed", "allowed"]
    assert [_reserve(one), _reserve(two)] == ["rate_limited"] * 2
    assert len(_repeated(s1)) == 1
    assert _reserve(two) == "rate_limited"
    assert len(_repeated(s1)) == 2


def test_a_restart_between_refusals_keeps_the_count(store, tmp_path):
    clock = Clock(utc(2026, 3, 20, 12, 10))
    one, s1 = _aggregator(store, tmp_path, clock, "one")
    assert [_reserve(one), _reserve(one), _reserve(one)] == ["allowed"] + ["rate_limited"] * 2
    s1.close()  # the process stops; a new one starts on the same store
    again, s2 = _aggregator(store, tmp_path, clock, "again")
    assert _repeated(s2) == []
    assert _reserve(again) == "rate_limited"  # the 3rd refusal of the hour
    [alert] = _repeated(s2)
    assert alert.data["refusals"] == 3


def test_two_replicas_on_one_redis_alert_once_at_the_nth_refusal(store, tmp_path, redis_url):
    from meterline.aggregator.budgets import BudgetService, load_budgets_config

    clock = Clock(utc(2026, 3, 20, 12, 10))
    apps = []
    for name in ("one", "two"):
        app, _ = _aggregator(store, tmp_path, clock, name)
        path = tmp_path / name / "meterline.yaml"
        app.state.budgets = BudgetService(
            store, load_budgets_config(path, currency="USD"), currency="USD", clock=clock,
            redis_url=redis_url,
        )  # fmt: skip
        service = AlertService(
            store, app.state.config.alerts, pricing=lambda app=app: app_pricing(app),
            budgets=lambda app=app: app.state.budgets, currency="USD", clock=clock,
        )  # fmt: skip
        app.state.alert_loop = AlertLoop(service)
        apps.append((app, service))
    (one, s1), (two, s2) = apps
    # one ledger in Redis: one request per minute between both replicas
    assert [_reserve(one), _reserve(two), _reserve(one)] == ["allowed"] + ["rate_limited"] * 2
    assert _repeated(s1) == []
    assert _reserve(two) == "rate_limited"
    [alert] = _repeated(s1)
    assert alert.data["refusals"] == 3
    assert [_reserve(one), _reserve(two)] == ["rate_limited"] * 2
    assert len(_repeated(s2)) == 1
    _, [(rows,)] = store.query("SELECT count() FROM {db}.rate_limit_refusals")
    assert rows == 0  # counted in Redis, not in the store
