"""An alert: what crossed, when, and its deterministic id.

An alert's id is a digest of its kind and of what it is about (a budget's consumer,
feature and period, the period's start and the threshold; a rolling rule and the hour its
window first passed the limit), never of when it was found: finding the same crossing
again — the next check, after a restart, on another replica — names the same alert, and
the store keeps it once. A delivery's id is a digest of the alert's id and the webhook's
URL: the same on every attempt and after a restart, so a receiver de-duplicates on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

BUDGET_THRESHOLD = "budget.threshold"
ROLLING_THRESHOLD = "rolling.threshold"
RATE_LIMIT_REPEATED = "rate_limit.repeated"
"""One rate limit refused ``alerts.rate_limit_refusals`` calls within one UTC hour."""


def digest_id(prefix: str, *parts: object) -> str:
    text = "\x1f".join(str(p) for p in parts)
    return f"{prefix}_{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def delivery_id(alert_id: str, url: str) -> str:
    """The delivery of ``alert_id`` to the webhook at ``url`` (stable across attempts)."""
    return digest_id("dlv", alert_id, url)


def _iso(at: datetime) -> str:
    from meterline.aggregator._instants import iso

    return iso(at)


@dataclass(frozen=True)
class Alert:
    """One recorded alert."""

    id: str
    kind: str
    """``budget.threshold``, ``rolling.threshold`` (or a kind added later)."""
    consumer: str
    feature: str | None
    period: str
    """The budget's period (``day``, ``week``, ``month``, ``total``); ``rolling``; …"""
    period_start: datetime
    period_end: datetime
    threshold: str
    """Percent of the limit (budgets), ``""`` for rolling windows."""
    limit: Decimal
    unit: str
    spent: Decimal
    """What was spent when the crossing was found (in ``unit``)."""
    created_at: datetime
    data: dict[str, Any] = field(default_factory=dict)
    """Kind-specific details (the budget's mode, the rule's window, …)."""

    def to_dict(self) -> dict[str, Any]:
        from meterline.aggregator.budgets._model import shown

        tokens = self.unit == "tokens"
        return {
            "id": self.id,
            "kind": self.kind,
            "consumer": self.consumer,
            "feature": self.feature,
            "period": self.period,
            "period_start": _iso(self.period_start),
            "period_end": _iso(self.period_end),
            "threshold": int(self.threshold) if self.threshold else None,
            "limit": shown(self.limit, tokens),
            "unit": self.unit,
            "spent": shown(self.spent, tokens),
            "created_at": _iso(self.created_at),
            **({"data": self.data} if self.data else {}),
        }

    def payload(self, delivery: str) -> bytes:
        """The JSON body a webhook receives (the same bytes on every attempt)."""
        body = {"id": delivery, "type": self.kind, "created_at": _iso(self.created_at),
                "alert": self.to_dict()}  # fmt: skip
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
