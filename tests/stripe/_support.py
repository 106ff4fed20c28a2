"""Shared pieces of the Stripe sync tests: configuration, calls, the client."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterline.aggregator.stripe import MeterEventsClient, Retrying, StripeEnv
from meterline.stripe_standin import StandinConfig, StandinServer

PRICING_YAML = """
currency: USD
models:
  - provider: openai
    model: gpt-4o
    per_million_tokens: {input: "2.50", cache_read: "1.25", output: "10.00"}
  - provider: anthropic
    model: claude-sonnet-4
    per_million_tokens: {input: "3.00", cache_read: "0.30", cache_write: "3.75",
                         output: "15.00"}
plans:
  consumers:
    acme: {markup_percent: "20"}
"""

STRIPE_YAML = """
stripe:
  customers: {acme: cus_acme, globex: cus_globex}
  window: WINDOW
  grace: 1h
  unpriced: UNPRICED
  meters:
    - event_name: llm_input_tokens
      value: tokens
      token_types: [input, cache_read, cache_write, cache_write_1h]
    - event_name: llm_output_tokens
      value: tokens
      token_types: [output, reasoning]
    - event_name: llm_cost
      value: cost
      unit: "0.000001"
"""

METERS = ("llm_input_tokens", "llm_output_tokens", "llm_cost")
CUSTOMERS = ("cus_acme", "cus_globex", "cus_initech")
INPUT_TYPES = ("input", "cache_read", "cache_write", "cache_write_1h")
OUTPUT_TYPES = ("output", "reasoning")


def write_config(
    directory: Path, *, window: str = "hour", unpriced: str = "hold", pricing: str = PRICING_YAML
) -> Path:
    path = directory / "meterline.yaml"
    text = pricing + STRIPE_YAML.replace("WINDOW", window).replace("UNPRICED", unpriced)
    path.write_text(text, encoding="utf-8")
    return path


def hours_ago(n: float, now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=n)


def standin(**config: Any) -> StandinServer:
    return StandinServer(StandinConfig(customers=CUSTOMERS, meters=METERS, **config)).start()


def client_for(fake: StandinServer, **retry: Any) -> MeterEventsClient:
    env = StripeEnv(
        api_key=fake.api_key,
        api_base=fake.base_addresses["api"],
        meter_events_base=fake.base_addresses["meter_events"],
    )
    retrying = Retrying(**{"base": 0.01, "cap": 0.05, **retry})
    return MeterEventsClient(env, retrying=retrying)


def expected_from_invoices(
    invoices: Iterable[Any], customers: dict[str, str], pricing: Any = None
) -> dict[tuple[str, str], Decimal]:
    """(customer, meter) → what the invoices bill: tokens, and money (cost meter); with
    ``pricing``, also (customer, "rounding") → how far the invoice total may be from the
    exact money (docs/stripe.md)."""
    from meterline.aggregator.stripe._service import invoice_rounding

    out: dict[tuple[str, str], Decimal] = {}
    for inv in invoices:
        customer = customers.get(inv.consumer)
        if customer is None:
            continue
        tin = sum(line.quantity for line in inv.lines if line.token_type in INPUT_TYPES)
        tout = sum(line.quantity for line in inv.lines if line.token_type in OUTPUT_TYPES)
        for meter, value in (("llm_input_tokens", tin), ("llm_output_tokens", tout),
                             ("llm_cost", Decimal(inv.total))):  # fmt: skip
            if value:
                out[(customer, meter)] = Decimal(value)
        if pricing is not None:
            out[(customer, "rounding")] = invoice_rounding(inv, pricing)
    return out
