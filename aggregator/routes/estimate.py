"""``POST /v1/estimate``: what a call would cost before it is sent (docs/estimate.md).

Needs the ``read`` scope (the estimate reads the consumer's history and budgets); a
consumer key estimates only for its own consumer (403 otherwise). Nothing is reserved.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from meterline.aggregator.auth import ReadDep
from meterline.aggregator.budgets import LedgerUnavailable
from meterline.aggregator.deps import StoreDep
from meterline.aggregator.estimates import EstimateError, EstimateRequest, estimate
from meterline.aggregator.routes._budgets import BudgetsDep
from meterline.aggregator.routes._pricing import PricingDep

router = APIRouter(prefix="/v1/estimate", tags=["budgets"])

_MAX_TOKENS = 2**40
_APIS = ("chat", "responses", "completions", "embeddings", "messages", "gemini")


class EstimateCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    consumer: str = Field(min_length=1, max_length=512)
    feature: str | None = Field(None, min_length=1, max_length=512)
    provider: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=256)
    messages: list[Any] | None = None
    input: Any = None
    prompt: Any = None
    system: Any = None
    instructions: str | None = None
    contents: Any = None
    tools: list[Any] | None = None
    max_tokens: int | None = Field(None, ge=0, le=_MAX_TOKENS, strict=True)
    api: str | None = Field(None, description=f"one of {', '.join(_APIS)}; default: inferred")

    @model_validator(mode="after")
    def _has_input(self) -> EstimateCreate:
        if all(v is None for v in (self.messages, self.input, self.prompt, self.contents)):
            raise ValueError("give the request's messages, input, prompt or contents")
        if self.api is not None and self.api not in _APIS:
            raise ValueError(f"unknown api {self.api!r}, allowed: {', '.join(_APIS)}")
        return self


@router.post("")
def create_estimate(
    body: EstimateCreate,
    store: StoreDep,
    pricing: PricingDep,
    budgets: BudgetsDep,
    principal: ReadDep,
) -> dict[str, Any]:
    """Input tokens, expected and worst-case output and their cost, and each budget's fit."""
    if principal.role == "consumer" and body.consumer != principal.consumer:
        raise HTTPException(
            status_code=403, detail=f"this key estimates only for consumer {principal.consumer!r}"
        )
    fields = body.model_dump(exclude_none=True)
    req = EstimateRequest(
        consumer=body.consumer, provider=body.provider, model=body.model, body=fields,
        feature=body.feature, max_tokens=body.max_tokens, api=body.api,
    )  # fmt: skip
    try:
        return estimate(store, pricing, budgets, req, now=budgets.now()).to_dict()
    except EstimateError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    except LedgerUnavailable as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
