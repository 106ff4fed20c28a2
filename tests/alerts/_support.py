"""Shared pieces of the alert tests: an app on a settable clock with budgets and alerts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meterline.aggregator.alerts import AlertService
from meterline.aggregator.routes._pricing import app_pricing
from meterline.store import Store
from tests.aggregator._budgets import Clock, budget_app

SECRET_ENV = "METERLINE_TEST_ALERTS_SECRET"
SECRET = "whsec-test-3f9a"


def alerts_yaml(*, webhooks: list[str] = (), rolling: str = "", retry: str = "") -> str:
    lines = ["alerts:", "  check_interval: 1s"]
    if webhooks:
        lines.append("  webhooks:")
        for url in webhooks:
            lines.append(f"    - {{url: {url!r}, secret: '${{{SECRET_ENV}}}'}}")
    if rolling:
        lines.append("  rolling:")
        lines.append(rolling)
    if retry:
        lines.append(f"  retry: {retry}")
    return "\n".join(lines) + "\n"


def alert_app(
    store: Store, tmp_path: Path, clock: Clock | None, yaml: str
) -> tuple[Any, AlertService]:
    """The API (budgets on ``clock``; ``None``: the real one) and an alert service over
    the same app."""
    app = budget_app(store, tmp_path, clock, yaml)
    service = AlertService(
        store, app.state.config.alerts, pricing=lambda: app_pricing(app),
        budgets=lambda: app.state.budgets, currency="USD", clock=clock,
    )  # fmt: skip
    return app, service
