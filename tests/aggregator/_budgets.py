"""Test support for budgets: an app whose budget service runs on a settable clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from meterline.aggregator.app import create_app
from meterline.aggregator.budgets import BudgetService, load_budgets_config
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator._tenants import ADMIN_KEYS, client
from tests.aggregator.pricing_config import CONFIG_YAML, write_config

ADMIN = ADMIN_KEYS[0]


@dataclass
class Clock:
    """``datetime.now`` that a test moves."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def budget_app(
    store: Store,
    tmp_path: Path,
    clock: Clock | None,
    extra_yaml: str = "",
    *,
    snapshot_seconds: float = 0,
):
    """The API over ``store`` with the shared pricing (acme: 20 % markup) and the budgets
    of ``extra_yaml``; by default every state read goes to the store (no snapshot reuse).
    ``clock=None``: the real clock."""
    path = write_config(tmp_path, CONFIG_YAML + extra_yaml)
    settings = ServerSettings(config=path, admin_key=",".join(ADMIN_KEYS))
    app = create_app(settings, store)
    app.state.budgets = BudgetService(
        store, load_budgets_config(path, currency="USD"), currency="USD",
        snapshot_seconds=snapshot_seconds, clock=clock,
    )  # fmt: skip
    return app


def admin(app):
    return client(app, ADMIN)


def reserve_body(**kw) -> dict:
    body = {"consumer": "acme", "feature": None, "provider": "openai", "model": "gpt-4o",
            "input_tokens": 1000, "max_tokens": 500}  # fmt: skip
    body.update(kw)
    return body
