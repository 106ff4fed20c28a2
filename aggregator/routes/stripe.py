"""Stripe: who a consumer is in Stripe (``PUT``/``GET /v1/consumers/{consumer}``), and the
sync (``POST /v1/stripe/sync``, ``GET /v1/stripe/status``, ``GET /v1/stripe/reconcile``,
``POST /v1/stripe/setup``) and the invoice mode (``POST /v1/stripe/push-invoices``), the
same as ``meterline stripe …``.

Admin routes (a consumer key gets 403). The assignment
made here wins over ``stripe.customers`` of the configuration file; ``null`` removes it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict

from meterline.aggregator.auth import require_admin
from meterline.aggregator.deps import StoreDep
from meterline.aggregator.invoices import InvoiceError
from meterline.aggregator.routes._pricing import PricingDep
from meterline.aggregator.stripe import (
    StripeAuthError,
    StripeConfig,
    StripeRequestError,
    assign_customer,
    load_customer_map,
    push_invoices,
    reconcile_report,
    setup,
    status,
    sync,
)

router = APIRouter(tags=["stripe"], dependencies=[Depends(require_admin)])


def get_stripe_config(request: Request) -> StripeConfig | None:
    """The ``stripe`` section of the configuration file in use (checked when the file was
    read; a SIGHUP reload applies from the next request on)."""
    return request.app.state.config.stripe.export()


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
    """Assign a Stripe customer (``null``: the file's applies again). 422 for an id that is
    not ``cus_…`` of at most 255 characters, or that Stripe says does not exist (checked
    when the server has ``STRIPE_API_KEY``); ``warnings`` says when it could not be checked
    or the consumer has no usage and no key yet (accepted: mapping before the first call)."""
    try:
        return assign_customer(store, config, consumer, body.stripe_customer_id)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


@router.get("/v1/consumers/{consumer}")
def get_consumer(consumer: str, store: StoreDep, config: StripeConfigDep) -> dict[str, Any]:
    return _public(store, config, consumer)


def _config_or_409(config: StripeConfig | None) -> StripeConfig:
    if config is None or not config.meters:
        raise HTTPException(status_code=409, detail="no stripe: section with meters configured")
    return config


@router.post("/v1/stripe/sync")
def post_sync(
    store: StoreDep,
    config: StripeConfigDep,
    pricing: PricingDep,
    api: str = "auto",
    dry_run: bool = False,
) -> dict[str, Any]:
    """Run a sync now (the same as ``meterline stripe sync``)."""
    try:
        summary = sync(store, _config_or_409(config), pricing=pricing, api=api, dry_run=dry_run)
    except StripeAuthError as exc:
        raise HTTPException(status_code=502, detail=str(exc)) from None
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return summary.to_dict()


@router.get("/v1/stripe/status")
def get_status(store: StoreDep, config: StripeConfigDep, pricing: PricingDep) -> dict[str, Any]:
    """Last run, pending windows, held and reported items, lag."""
    return status(store, _config_or_409(config), pricing=pricing)


@router.get("/v1/stripe/reconcile")
def get_reconcile(
    period: str,
    store: StoreDep,
    config: StripeConfigDep,
    pricing: PricingDep,
    check_stripe: bool = False,
) -> dict[str, Any]:
    """Invoices against what Stripe accepted; consumers without a customer are listed in
    ``not_billed`` and left out of ``ok``. ``check_stripe=true``: also against what
    Stripe's meters hold (their event summaries); 502 when Stripe cannot be read."""
    try:
        return reconcile_report(
            store, pricing, _config_or_409(config), period, check_stripe=check_stripe
        )
    except StripeRequestError as exc:
        raise HTTPException(status_code=502, detail=str(exc)) from None
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


@router.post("/v1/stripe/setup")
def post_setup(store: StoreDep, config: StripeConfigDep) -> dict[str, Any]:
    """Create the meters Stripe lacks and check the mapped customers (``ok``, ``error``)."""
    try:
        return setup(store, _config_or_409(config))
    except StripeRequestError as exc:
        raise HTTPException(status_code=502, detail=str(exc)) from None


@router.post("/v1/stripe/push-invoices")
def post_push_invoices(
    period: str,
    store: StoreDep,
    config: StripeConfigDep,
    pricing: PricingDep,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Push the month's finalised invoices to Stripe (``meterline stripe push-invoices``)."""
    try:
        return push_invoices(store, pricing, config, period, dry_run=dry_run).to_dict()
    except StripeAuthError as exc:
        raise HTTPException(status_code=502, detail=str(exc)) from None
    except InvoiceError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
