"""``/v1/budgets``: budgets per consumer (optionally per feature) and their state.

Admin keys change them (``PUT``/``DELETE``); a consumer key with ``read`` sees its own
(another consumer's answers 404, whether it exists or not). A budget is named by its
consumer, ``?feature=`` (absent: consumer-wide) and its period; ``GET``/``DELETE`` need
``?period=`` only when the consumer has several budgets of that scope.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from meterline.aggregator.auth import ScopeDep, require_admin
from meterline.aggregator.budgets import PERIODS, Budget, BudgetError, budget_from_dict
from meterline.aggregator.routes._budgets import BudgetsDep
from meterline.aggregator.routes._pricing import PricingDep

router = APIRouter(prefix="/v1/budgets", tags=["budgets"])

Feature = Annotated[
    str | None, Query(min_length=1, description="A feature's budget; absent: consumer-wide")
]
PeriodQuery = Annotated[
    Literal["day", "week", "month", "total"] | None,
    Query(description="Needed when the scope has budgets of several periods"),
]


class BudgetPut(BaseModel):
    """``PUT``'s body; unknown fields are rejected. ``limit`` is a decimal string."""

    model_config = ConfigDict(extra="forbid")

    limit: StrictStr | StrictInt | float = Field(
        description='Decimal string ("25.00"), or whole tokens'
    )
    """A float is accepted here only to be refused with a clear message (binary rounding)."""
    unit: str = Field(description="The pricing currency, or 'tokens'")
    period: Literal["day", "week", "month", "total"]
    mode: Literal["soft", "hard"] = "hard"
    thresholds: list[int] = Field(default_factory=lambda: [50, 80, 100])
    policy: Literal["block", "degrade", "checkpoint"] | None = None
    degrade: dict[str, Any] | None = None
    timezone: str | None = None


def _one(budgets: list[Budget], consumer: str, feature: str | None) -> Budget:
    if not budgets:
        raise HTTPException(status_code=404, detail="Not Found")
    if len(budgets) > 1:
        periods = ", ".join(b.period for b in budgets)
        where = f"feature {feature!r} of {consumer!r}" if feature else repr(consumer)
        raise HTTPException(
            status_code=400,
            detail=f"{where} has budgets for {periods}: add ?period= to name one",
        )
    return budgets[0]


@router.get("")
def list_budgets(service: BudgetsDep, pricing: PricingDep, scope: ScopeDep) -> dict[str, Any]:
    """Every budget the caller may see, with its state now."""
    visible = [b for b in service.registry.all() if scope.admits(b.consumer)]
    return {"budgets": [s.to_dict() for s in service.states(pricing, visible)]}


@router.get("/{consumer:path}")
def get_budget(
    consumer: str,
    service: BudgetsDep,
    pricing: PricingDep,
    scope: ScopeDep,
    feature: Feature = None,
    period: PeriodQuery = None,
) -> dict[str, Any]:
    """The budget's state: limit, spent (the invoices' money), reserved, remaining."""
    if not scope.admits(consumer):
        raise HTTPException(status_code=404, detail="Not Found")
    budget = _one(service.registry.find(consumer, feature, period), consumer, feature)
    return service.states(pricing, [budget])[0].to_dict()


@router.put("/{consumer:path}", dependencies=[Depends(require_admin)])
def put_budget(
    consumer: str,
    body: BudgetPut,
    service: BudgetsDep,
    pricing: PricingDep,
    response: Response,
    feature: Feature = None,
) -> dict[str, Any]:
    """Create or replace the (consumer, feature, period) budget."""
    fields = body.model_dump(exclude_none=True)
    if "timezone" not in fields:
        fields["timezone"] = service.config.timezone
    try:
        budget = budget_from_dict(consumer, feature, fields, currency=pricing.config.currency)
    except BudgetError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    if service.registry.configured(budget.key):
        raise HTTPException(
            status_code=409,
            detail="this budget is defined in the configuration file (budgets.limits): "
            "change it there",
        )
    existed = bool(service.registry.find(consumer, feature, budget.period))
    service.registry.put(budget)
    response.status_code = status.HTTP_200_OK if existed else status.HTTP_201_CREATED
    return service.states(pricing, [budget])[0].to_dict()


@router.delete(
    "/{consumer:path}",
    dependencies=[Depends(require_admin)],
    status_code=status.HTTP_204_NO_CONTENT,
)
def delete_budget(
    consumer: str, service: BudgetsDep, feature: Feature = None, period: PeriodQuery = None
) -> Response:
    """Delete the budget (live reservations against it no longer matter)."""
    budget = _one(service.registry.find(consumer, feature, period), consumer, feature)
    if budget.source == "config":
        raise HTTPException(
            status_code=409,
            detail="this budget is defined in the configuration file (budgets.limits): "
            "remove it there",
        )
    service.registry.delete(budget)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


__all__ = ["PERIODS", "router"]
