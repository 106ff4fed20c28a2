"""``GET /v1/alerts``: the recorded alerts (budget thresholds, rolling windows).

Admin: every consumer's, each with its deliveries (webhook URL, state, attempts). A
consumer key with ``read``: only its own consumer's alerts, without deliveries (the
webhooks are the operator's). Newest first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from meterline.aggregator.alerts import Outbox
from meterline.aggregator.auth import ScopeDep
from meterline.aggregator.deps import StoreDep

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])


@router.get("")
def list_alerts(
    request: Request,
    store: StoreDep,
    scope: ScopeDep,
    consumer: Annotated[str | None, Query(min_length=1)] = None,
    kind: Annotated[str | None, Query(min_length=1)] = None,
    since: Annotated[datetime | None, Query(description="Created at or after (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """Recorded alerts the caller may see, newest first."""
    outbox = Outbox(store)
    if consumer is not None and not scope.admits(consumer):
        return {"alerts": []}
    alerts = outbox.alerts(scope, consumer=consumer, kind=kind, since=since, limit=limit)
    out = [a.to_dict() for a in alerts]
    if scope.consumer is None:  # admin: with the deliveries
        by_alert: dict[str, list[dict[str, Any]]] = {}
        for d in outbox.deliveries(alert_ids=[a.id for a in alerts]):
            by_alert.setdefault(d.alert_id, []).append(d.to_dict())
        for row in out:
            row["deliveries"] = by_alert.get(row["id"], [])
    return {"alerts": out}
