"""``/v1/reservations``: reserve a call's worst case, settle it with its usage, release it
(the contract: docs/budgets.md). Needs the ``reserve`` scope (or the admin key); a
consumer key reserves only for its own consumer and sees only its own reservations.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from meterline.aggregator.auth import Principal, require_reserve
from meterline.aggregator.budgets import (
    LedgerUnavailable,
    ReservationError,
    ReserveRequest,
    UnknownReservation,
    check_usage,
)
from meterline.aggregator.budgets._lease import MAX_REPORT
from meterline.aggregator.routes._budgets import BudgetsDep
from meterline.aggregator.routes._pricing import PricingDep

router = APIRouter(prefix="/v1/reservations", tags=["budgets"])

ReserveDep = Annotated[Principal, Depends(require_reserve)]
_MAX_TOKENS = 2**40


class ReservationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    consumer: str = Field(min_length=1, max_length=512)
    feature: str | None = Field(None, min_length=1, max_length=512)
    provider: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=256)
    input_tokens: int = Field(ge=0, le=_MAX_TOKENS)
    max_tokens: int | None = Field(None, ge=0, le=_MAX_TOKENS)
    ttl_seconds: int | None = Field(None, ge=1)
    lease: bool = False


class ReservationSettle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    usage: dict[str, Any]
    model: str | None = Field(None, min_length=1, max_length=256)
    response_id: str | None = Field(None, max_length=512)
    estimated: bool = False


class LeaseCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=1, le=2**40)
    usage: dict[str, Any]
    model: str | None = Field(None, min_length=1, max_length=256)
    response_id: str | None = Field(None, max_length=512)
    estimated: bool = False


class LeaseReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calls: list[LeaseCall] = Field(max_length=MAX_REPORT)


def _own(principal: Principal) -> str | None:
    """The consumer a consumer key is limited to (``None``: admin)."""
    return principal.consumer if principal.role == "consumer" else None


@router.post("")
def reserve(
    request: Request,
    body: ReservationCreate,
    service: BudgetsDep,
    pricing: PricingDep,
    principal: ReserveDep,
) -> dict[str, Any]:
    """Reserve the call's worst case against every budget that applies, atomically."""
    own = _own(principal)
    if own is not None and body.consumer != own:
        raise HTTPException(status_code=403, detail=f"this key reserves only for consumer {own!r}")
    try:
        decision = service.reserve(pricing, ReserveRequest(**body.model_dump()))
    except ReservationError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    except LedgerUnavailable as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    alerts = getattr(request.app.state, "alert_loop", None)
    if decision.rate is not None and alerts is not None:
        alerts.rate_limited(decision.rate.limit, used=decision.rate_used)
    return decision.to_dict()


@router.post("/{rid}/settle")
def settle(
    request: Request,
    rid: str,
    body: ReservationSettle,
    service: BudgetsDep,
    pricing: PricingDep,
    principal: ReserveDep,
) -> dict[str, Any]:
    """Replace the worst case by the call's usage; a second settle changes nothing."""
    try:
        usage = check_usage(body.usage)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    try:
        state = service.settle(
            pricing, rid, usage=usage, model=body.model, consumer=_own(principal)
        )
    except UnknownReservation:
        raise HTTPException(status_code=404, detail="Not Found") from None
    except LedgerUnavailable as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    alerts = getattr(request.app.state, "alert_loop", None)
    if alerts is not None:  # spent may have changed: check crossings soon
        alerts.poke()
    return {"id": rid, "status": state}


@router.post("/{rid}/calls")
def report(
    request: Request,
    rid: str,
    body: LeaseReport,
    service: BudgetsDep,
    pricing: PricingDep,
    principal: ReserveDep,
) -> dict[str, Any]:
    """Record the calls made under a lease with their usage (each once, by its ``n``);
    answers the lease's status and whether the guard must stop using it (``revoked``)."""
    calls = []
    for call in body.calls:
        try:
            usage = check_usage(call.usage)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=f"call {call.n}: {exc}") from None
        calls.append({"n": call.n, "usage": usage, "model": call.model})
    try:
        answer = service.report(pricing, rid, calls, consumer=_own(principal))
    except UnknownReservation:
        raise HTTPException(status_code=404, detail="Not Found") from None
    except LedgerUnavailable as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    alerts = getattr(request.app.state, "alert_loop", None)
    if alerts is not None and calls:
        alerts.poke()
    return answer


@router.delete("/{rid}", status_code=status.HTTP_204_NO_CONTENT)
def release(rid: str, service: BudgetsDep, principal: ReserveDep) -> Response:
    """Release a reservation whose call was not sent or failed without usage."""
    try:
        service.release(rid, consumer=_own(principal))
    except UnknownReservation:
        raise HTTPException(status_code=404, detail="Not Found") from None
    except LedgerUnavailable as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)
