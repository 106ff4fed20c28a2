"""Stripe: who a consumer is in Stripe (``PUT``/``GET /v1/consumers/{consumer}``).

Admin routes (a consumer key gets 403). The assignment
made here wins over ``stripe.customers`` of the configuration file; ``null`` removes it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict

from meterline.aggregator.auth import require_admin
from meterline.aggregator.deps import SettingsDep, StoreDep
from meterline.aggregator.stripe import (
    StripeConfig,
    StripeConfigError,
    load_customer_map,
    load_stripe_config,
    set_customer,
)

router = APIRouter(tags=["stripe"], dependencies=[Depends(require_admin)])


def get_stripe_config(request: Request, settings: SettingsDep) -> StripeConfig | None:
    """The ``stripe`` section of the configuration file, read once per app."""
    state = request.app.state
    if not hasattr(state, "stripe_config"):
        try:
            state.stripe_config = load_stripe_config(settings.config)
        except StripeConfigError as exc:
            raise HTTPException(status_code=500, detail=str(exc)) from None
    return state.stripe_config


StripeConfigDep = Annotated[StripeConfig | None, Depends(get_stripe_config)]


class ConsumerUpdate(BaseModel):
    """``PUT /v1/consumers/{consumer}``'s body."""

    model_config = ConfigDict(extra="forbid")

    stripe_customer_id: str | None
    """``cus_…``, or ``null`` to fall back to the configuration file."""


def _public(store: StoreDep, config: StripeConfig | None, consumer: str) -> dict[str, Any]:
    mapping = load_customer_map(store, config)
    return {
        "consumer": consumer,
        "stripe_customer_id": mapping.customer_for(consumer),
        "source": mapping.source(consumer),
    }


@router.put("/v1/consumers/{consumer}")
def put_consumer(
    consumer: str, body: ConsumerUpdate, store: StoreDep, config: StripeConfigDep
) -> dict[str, Any]:
    try:
        set_customer(store, consumer, body.stripe_customer_id)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return _public(store, config, consumer)


@router.get("/v1/consumers/{consumer}")
def get_consumer(consumer: str, store: StoreDep, config: StripeConfigDep) -> dict[str, Any]:
    return _public(store, config, consumer)
