"""Grafana dashboards for this deployment (issue 12 §3).

``GET /v1/grafana/dashboards`` lists them; ``GET /v1/grafana/dashboards/{uid}`` serves one
dashboard's JSON with this deployment's database, the pricing currency (the money
panels' unit and rounding) and the datasource uid (``?datasource_uid=``, default
``METERLINE_GRAFANA_DATASOURCE_UID``, else ``meterline``) — ready for Grafana's import or
``POST /api/dashboards/db``. Admin routes: a dashboard reads every consumer's data.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from meterline.aggregator.auth import require_admin
from meterline.aggregator.deps import SettingsDep, StoreDep
from meterline.aggregator.grafana import DASHBOARD_UIDS, build_dashboards
from meterline.aggregator.routes._budgets import BudgetsDep
from meterline.aggregator.routes._pricing import PricingDep

router = APIRouter(tags=["grafana"], dependencies=[Depends(require_admin)])

DatasourceUid = Annotated[
    str | None,
    Query(
        max_length=40,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The Grafana datasource uid the dashboards default to.",
    ),
]


def _dashboards(
    store: StoreDep,
    settings: SettingsDep,
    pricing: PricingDep,
    uid: str | None,
    budgets: BudgetsDep,
) -> list[dict[str, Any]]:
    config = pricing.config
    return build_dashboards(
        datasource_uid=uid or settings.grafana_datasource_uid,
        database=store.database,
        currency=config.currency,
        minor_units=config.minor_units,
        budgets=budgets.registry.config.limits,
    )


@router.get("/v1/grafana/dashboards")
def list_dashboards(
    store: StoreDep,
    settings: SettingsDep,
    pricing: PricingDep,
    budgets: BudgetsDep,
    datasource_uid: DatasourceUid = None,
) -> dict[str, Any]:
    """The dashboards: uid, title and where to get each."""
    docs = _dashboards(store, settings, pricing, datasource_uid, budgets)
    return {
        "dashboards": [
            {"uid": d["uid"], "title": d["title"], "url": f"/v1/grafana/dashboards/{d['uid']}"}
            for d in docs
        ]
    }


@router.get("/v1/grafana/dashboards/{uid}")
def get_dashboard(
    uid: str,
    store: StoreDep,
    settings: SettingsDep,
    pricing: PricingDep,
    budgets: BudgetsDep,
    datasource_uid: DatasourceUid = None,
) -> dict[str, Any]:
    """One dashboard's JSON for this deployment."""
    if uid not in DASHBOARD_UIDS:
        raise HTTPException(
            404, detail=f"no dashboard {uid!r}; there are: {', '.join(DASHBOARD_UIDS)}"
        )
    docs = _dashboards(store, settings, pricing, datasource_uid, budgets)
    return next(d for d in docs if d["uid"] == uid)
