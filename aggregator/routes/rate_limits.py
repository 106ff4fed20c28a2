"""``/v1/rate-limits``: tokens, requests or money per minute / hour per consumer
(optionally per provider and model), enforced at reservation time (docs/rate-limits.md).

Admin keys change them (``PUT``/``DELETE``); a consumer key with ``read`` sees its own
(another consumer's: 404). A rate limit is named by its consumer, ``unit``, ``per`` and
its optional ``provider`` / ``model``; ``GET`` shows what the current window holds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from meterline.aggregator.auth import ScopeDep, require_admin
from meterline.aggregator.budgets import (
    BudgetError,
    LedgerUnavailable,
    RateLimit,
    rate_limit_from_dict,
)
from meterline.aggregator.routes._budgets import BudgetsDep
from meterline.aggregator.routes._pricing import PricingDep

router = APIRouter(prefix="/v1/rate-limits", tags=["budgets"])

Scoped = Annotated[str | None, Query(min_length=1, description="absent: every one")]


class RateLimitPut(BaseModel):
    """``PUT``'s body; unknown fields are rejected. ``limit`` is a decimal string."""

    model_config = ConfigDict(extra="forbid")

    limit: StrictStr | StrictInt | float = Field(description='Decimal string ("5.00") or whole')
    """A float is accepted here only to be refused with a clear message (binary rounding)."""
    unit: str = Field(description="'tokens', 'requests' or the pricing currency")
    per: Literal["minute", "hour"]
    provider: str | None = Field(None, min_length=1)
    model: str | None = Field(None, min_length=1)


def _states(service: Any, rates: list[RateLimit]) -> list[dict[str, Any]]:
    try:
        return service.rate_states(rates)
    except LedgerUnavailable as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None


@router.get("")
def list_rate_limits(service: BudgetsDep, scope: ScopeDep) -> dict[str, Any]:
    """Every rate limit the caller may see, with what its window holds now."""
    visible = [r for r in service.registry.all_rates() if scope.admits(r.consumer)]
    return {"rate_limits": _states(service, visible)}


@router.get("/{consumer:path}")
def get_rate_limits(consumer: str, service: BudgetsDep, scope: ScopeDep) -> dict[str, Any]:
    """The consumer's rate limits (404 for another consumer's key, or none)."""
    if not scope.admits(consumer):
        raise HTTPException(status_code=404, detail="Not Found")
    own = [r for r in service.registry.all_rates() if r.consumer == consumer]
    if not own:
        raise HTTPException(status_code=404, detail="Not Found")
    return {"rate_limits": _states(service, own)}


@router.put("/{consumer:path}", dependencies=[Depends(require_admin)])
def put_rate_limit(
    consumer: str, body: RateLimitPut, service: BudgetsDep, pricing: PricingDep,
    response: Response,
) -> dict[str, Any]:  # fmt: skip
    """Create or replace the (consumer, provider, model, unit, per) rate limit."""
    try:
        rate = rate_limit_from_dict(
            consumer, body.model_dump(exclude_none=True), currency=pricing.config.currency
        )
    except BudgetError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    if service.registry.rate_configured(rate.key):
        raise HTTPException(
            status_code=409,
            detail="this rate limit is defined in the configuration file "
            "(budgets.rate_limits): change it there",
        )
    existed = any(r.key == rate.key for r in service.registry.all_rates())
    service.registry.put_rate(rate)
    response.status_code = status.HTTP_200_OK if existed else status.HTTP_201_CREATED
    return _states(service, [rate])[0]


@router.delete(
    "/{consumer:path}", dependencies=[Depends(require_admin)],
    status_code=status.HTTP_204_NO_CONTENT,
)  # fmt: skip
def delete_rate_limit(
    consumer: str,
    service: BudgetsDep,
    unit: Annotated[str, Query(description="'tokens', 'requests' or the currency")],
    per: Annotated[Literal["minute", "hour"], Query()],
    provider: Scoped = None,
    model: Scoped = None,
) -> Response:
    """Delete the rate limit named by the query."""
    key = (consumer, provider or "", model or "", unit, per)
    found = [r for r in service.registry.all_rates() if r.key == key]
    if not found:
        raise HTTPException(status_code=404, detail="Not Found")
    if found[0].source == "config":
        raise HTTPException(
            status_code=409,
            detail="this rate limit is defined in the configuration file "
            "(budgets.rate_limits): remove it there",
        )
    service.registry.delete_rate(found[0])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
