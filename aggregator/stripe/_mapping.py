"""Consumer → Stripe customer: the API's assignment wins over the configuration file.

``PUT /v1/consumers/{consumer}`` with ``{"stripe_customer_id": "cus_…"}`` stores an
override (``stripe_customers``); ``null`` removes it, and ``stripe.customers`` of the
file applies again. A consumer in neither has no customer: the sync reports its usage
and sends nothing for it. The invoice push (§4) uses the same :func:`customer_for`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from meterline.aggregator.stripe._config import StripeConfig
from meterline.store import Store

__all__ = [
    "CustomerMap",
    "consumer_known",
    "customer_for",
    "customers_in_use",
    "load_customer_map",
    "set_customer",
    "validate_assignment",
]

_CUSTOMER = re.compile(r"cus_[A-Za-z0-9]+")
MAX_ID_LENGTH = 255
"""Stripe's longest object id."""


@dataclass(frozen=True)
class CustomerMap:
    """Who each consumer is in Stripe, as one snapshot."""

    file: Mapping[str, str] = field(default_factory=dict)
    """``stripe.customers`` of the configuration file."""
    overrides: Mapping[str, str] = field(default_factory=dict)
    """Set through the API (they win)."""

    def customer_for(self, consumer: str) -> str | None:
        """The consumer's Stripe customer id, or ``None`` when it has none."""
        return self.overrides.get(consumer) or self.file.get(consumer)

    def source(self, consumer: str) -> str | None:
        """``api``, ``config`` or ``None``: where :meth:`customer_for` found it."""
        if self.overrides.get(consumer):
            return "api"
        return "config" if self.file.get(consumer) else None


def _overrides(store: Store) -> dict[str, str]:
    _, rows = store.query(
        "SELECT ConsumerId, CustomerId FROM {db}.stripe_customers FINAL WHERE CustomerId != ''"
    )
    return {str(c): str(k) for c, k in rows}


def load_customer_map(store: Store, config: StripeConfig | None) -> CustomerMap:
    """Read the API's overrides and combine them with the file's ``stripe.customers``."""
    return CustomerMap(
        file=dict(config.customers) if config is not None else {}, overrides=_overrides(store)
    )


def customer_for(store: Store, config: StripeConfig | None, consumer: str) -> str | None:
    """The Stripe customer id of one consumer (API override, else the file), or ``None``."""
    return load_customer_map(store, config).customer_for(consumer)


def set_customer(store: Store, consumer: str, customer_id: str | None) -> None:
    """Assign (or, with ``None``, un-assign) a consumer's Stripe customer.

    Raises:
        ValueError: see :func:`validate_assignment`.
    """
    validate_assignment(consumer, customer_id)
    store.insert_columns(
        "stripe_customers",
        [[consumer], [customer_id or ""], [datetime.now(UTC)]],
        ["ConsumerId", "CustomerId", "UpdatedAt"],
    )


def validate_assignment(consumer: str, customer_id: str | None) -> None:
    """Check an assignment's form (not whether Stripe has the customer).

    Raises:
        ValueError: ``consumer`` is empty or ``customer_id`` is not ``cus_…`` of at most
            255 characters.
    """
    if not consumer:
        raise ValueError("the consumer id must not be empty")
    if customer_id is not None and len(customer_id) > MAX_ID_LENGTH:
        raise ValueError(
            f"the Stripe customer id is {len(customer_id)} characters long: Stripe's ids "
            f"have at most {MAX_ID_LENGTH}"
        )
    if customer_id is not None and not _CUSTOMER.fullmatch(customer_id):
        raise ValueError(f"{customer_id!r} is not a Stripe customer id (cus_…)")


def customers_in_use(mapping: CustomerMap) -> dict[str, list[str]]:
    """Customer id → the consumers mapped to it (the file's and the API's, API winning)."""
    out: dict[str, list[str]] = {}
    for consumer in sorted(set(mapping.file) | set(mapping.overrides)):
        customer = mapping.customer_for(consumer)
        if customer:
            out.setdefault(customer, []).append(consumer)
    return dict(sorted(out.items()))


def consumer_known(store: Store, consumer: str) -> bool:
    """Whether the store has usage or an API key of ``consumer`` (a mapping for a consumer
    never seen is allowed — it may be set up before its first call — but worth a word)."""
    _, [(n,)] = store.query(
        "SELECT (SELECT count() FROM {db}.llm_usage WHERE ConsumerId = {c:String}) + "
        "(SELECT count() FROM {db}.api_keys WHERE ConsumerId = {c:String})",
        {"c": consumer},
    )
    return int(n) > 0
