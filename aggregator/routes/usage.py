"""``GET /v1/usage``: token totals per consumer, feature, provider, model, day or hour."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from meterline.aggregator.auth import ScopeDep
from meterline.aggregator.deps import StoreDep
from meterline.aggregator.invoices import usage_costs
from meterline.aggregator.queries import READ_SETTINGS
from meterline.aggregator.queries.usage import GROUP_KEYS, UsageFilter, usage_sql
from meterline.aggregator.routes._params import From, To
from meterline.aggregator.routes._pricing import PricingDep
from meterline.aggregator.tenancy import Scope

router = APIRouter(prefix="/v1/usage", tags=["usage"])


class UsageQuery(BaseModel):
    """Query parameters of ``/v1/usage``; unknown parameters are rejected (422)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: From | None = Field(None, alias="from", description="ISO-8601, inclusive")
    to: To | None = Field(None, description="ISO-8601, exclusive")
    consumer: str | None = None
    feature: str | None = None
    provider: str | None = None
    model: str | None = None
    group_by: str = Field("", description=f"comma-separated: {', '.join(GROUP_KEYS)}")

    @field_validator("group_by")
    @classmethod
    def _group_keys(cls, value: str) -> str:
        for key in filter(None, (k.strip() for k in value.split(","))):
            if key not in GROUP_KEYS:
                raise ValueError(f"unknown group_by {key!r}, allowed: {', '.join(GROUP_KEYS)}")
        return value

    def to_filter(self, scope: Scope) -> UsageFilter:
        keys = tuple(dict.fromkeys(k.strip() for k in self.group_by.split(",") if k.strip()))
        return UsageFilter(
            start=self.from_,
            end=self.to,
            consumer=self.consumer,
            feature=self.feature,
            provider=self.provider,
            model=self.model,
            group_by=keys,
            scope=scope,
        )


def _jsonable(key: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    return value


@router.get("")
def get_usage(
    query: Annotated[UsageQuery, Query()], store: StoreDep, pricing: PricingDep, scope: ScopeDep
) -> dict[str, Any]:
    """Usage totals, one row per group (no group: one row for everything), with the
    exact ``cost`` (decimal string), its ``currency`` and ``unpriced_requests``.
    ``invalid_requests`` are calls whose reported usage the store rejected: in no token
    total and no cost. A consumer key reads only its consumer's usage (any ``consumer``
    filter is ANDed with it)."""
    if query.from_ and query.to and query.to <= query.from_:
        raise HTTPException(status_code=422, detail="'to' must be after 'from'")
    f = query.to_filter(scope)
    sql, params = usage_sql(f)
    # The same read settings as invoices, so usage and invoice totals always agree.
    names, rows = store.query(sql, params, settings=READ_SETTINGS)
    costs = usage_costs(store, pricing, f)
    return {
        "rows": [
            {n: _jsonable(n, v) for n, v in zip(names, row, strict=True)}
            | costs.columns(row[: len(f.group_by)])
            for row in rows
        ]
    }
