"""Alerts (issue 11 §5; docs/alerts.md): budget thresholds and rolling windows crossed,
recorded once per threshold and period, listed at ``GET /v1/alerts``, delivered to
webhooks signed (HMAC-SHA256 over ``timestamp.body``), retried with backoff and jitter,
once per alert and webhook even across a restart (an outbox in the store).

- :class:`AlertService` — check (find and record), deliver, and :meth:`~AlertService.
  raise_alert` for other kinds (rate limits hit repeatedly, issue 11 §4).
- :class:`AlertLoop` — the thread of ``meterline serve``.
- :func:`sign` / :func:`verify` — the signature scheme.

Tables: :mod:`meterline.store.alert_schema`.
"""

from meterline.aggregator.alerts._model import (
    BUDGET_THRESHOLD,
    RATE_LIMIT_REPEATED,
    ROLLING_THRESHOLD,
    Alert,
    delivery_id,
)
from meterline.aggregator.alerts._outbox import DELIVERED, FAILED, PENDING, Delivery, Outbox
from meterline.aggregator.alerts._service import AlertLoop, AlertService
from meterline.aggregator.alerts._webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    sign,
    verify,
)

__all__ = [
    "BUDGET_THRESHOLD",
    "DELIVERED",
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "FAILED",
    "PENDING",
    "RATE_LIMIT_REPEATED",
    "ROLLING_THRESHOLD",
    "SIGNATURE_HEADER",
    "Alert",
    "AlertLoop",
    "AlertService",
    "Delivery",
    "Outbox",
    "delivery_id",
    "sign",
    "verify",
]
