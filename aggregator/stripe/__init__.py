"""The Stripe export (issue 10 §2-§3; docs/stripe.md): usage reaches Stripe exactly once.

- :class:`StripeConfig` — the ``stripe:`` section (mapping, window, grace, meters).
- :func:`customer_for` / :class:`CustomerMap` — consumer → Stripe customer (the API's
  assignment wins over the file).

Tables: :mod:`meterline.store.stripe_schema`.
"""

from meterline.aggregator.stripe._config import (
    DEFAULT_GRACE,
    MeterConfig,
    StripeConfig,
    StripeConfigError,
    load_stripe_config,
    parse_duration,
    parse_stripe_config,
)
from meterline.aggregator.stripe._mapping import (
    CustomerMap,
    customer_for,
    load_customer_map,
    set_customer,
)

__all__ = [
    "DEFAULT_GRACE",
    "CustomerMap",
    "MeterConfig",
    "StripeConfig",
    "StripeConfigError",
    "customer_for",
    "load_customer_map",
    "load_stripe_config",
    "parse_duration",
    "parse_stripe_config",
    "set_customer",
]
