"""Property: an invoice equals the sum of per-call costs computed independently.

The expected costs are computed here call by call, from the same rows and a price
table written out by hand (not meterline's matching), then compared with the invoice:
the invoice's lines reproduce the exact (unrounded) sum of per-call costs, and its
total follows the documented rounding (lines half-up to the cent, markup on the
subtotal).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterline.aggregator.invoices import compute_invoices, month
from meterline.aggregator.pricing import Catalogue, load_pricing
from meterline.aggregator.tenancy import Scope
from meterline.store import Store
from tests.aggregator.pricing_config import write_config

MARCH = datetime(2026, 3, 1, tzinfo=UTC)
CHANGE = datetime(2026, 3, 16, tzinfo=UTC)
CATALOGUE = Catalogue.bundled()

# (provider, model) → list of (from, {token type: price}); tiers handled below
OLD_4O = {"input": "2.50", "cache_read": "1.25", "cache_write": "2.50", "cache_write_1h": "2.50",
          "output": "10.00", "reasoning": "10.00"}  # fmt: skip
NEW_4O = {"input": "2.00", "cache_read": "1.00", "cache_write": "2.00", "cache_write_1h": "2.00",
          "output": "8.00", "reasoning": "8.00"}  # fmt: skip
O3 = {"input": "2.00", "cache_read": "0.50", "cache_write": "2.00", "cache_write_1h": "2.00",
      "output": "8.00", "reasoning": "9.00"}  # fmt: skip
SONNET = {"input": "3.00", "cache_read": "0.30", "cache_write": "3.75", "cache_write_1h": "6.00",
          "output": "15.00", "reasoning": "15.00"}  # fmt: skip
SONNET_TIER = SONNET | {"input": "6.00", "output": "22.50", "reasoning": "22.50"}
MODELS = [("openai", "gpt-4o"), ("openai", "o3"), ("anthropic", "claude-sonnet-4-20250514"),
          ("openai", "mystery")]  # fmt: skip
MARKUP = {"acme": Decimal("20"), "beta": Decimal("0")}
BILLS_FAILED = {"acme": False, "beta": True}


def price_of(provider: str, model: str, at: datetime, input_tokens: int) -> dict[str, str] | None:
    if model == "gpt-4o":
        return NEW_4O if at >= CHANGE else OLD_4O
    if model == "o3":
        return O3
    if model.startswith("claude-sonnet-4"):
        return SONNET_TIER if input_tokens > 200_000 else SONNET
    return None


@dataclass(frozen=True)
class Row:
    consumer: str
    provider: str
    model: str
    at: datetime
    billable: bool
    input: int
    output: int
    cache_read: int
    cache_creation: int
    cache_creation_1h: int
    reasoning: int


@st.composite
def rows(draw: st.DrawFn) -> Row:
    provider, model = draw(st.sampled_from(MODELS))
    at = draw(
        st.one_of(
            st.sampled_from([CHANGE - timedelta(seconds=1), CHANGE, MARCH]),
            st.integers(0, 31 * 86400 - 1).map(lambda s: MARCH + timedelta(seconds=s)),
        )
    )
    input_tokens = draw(st.one_of(st.integers(0, 5000), st.integers(199_990, 200_010),
                                  st.integers(0, 400_000)))  # fmt: skip
    cache_read = draw(st.integers(0, input_tokens))
    cache_creation = draw(st.integers(0, input_tokens - cache_read))
    output = draw(st.integers(0, 50_000))
    return Row(
        consumer=draw(st.sampled_from(["acme", "beta"])),
        provider=provider,
        model=model,
        at=at,
        billable=draw(st.booleans().map(lambda b: b or draw(st.booleans()))),
        input=input_tokens,
        output=output,
        cache_read=cache_read,
        cache_creation=cache_creation,
        cache_creation_1h=draw(st.integers(0, cache_creation)),
        reasoning=draw(st.integers(0, output)),
    )


def insert_rows(store: Store, batch: list[Row]) -> None:
    names = ("Timestamp", "ConsumerId", "Provider", "RequestModel", "ResponseModel", "Billable",
             "InputTokens", "OutputTokens", "CacheReadInputTokens", "CacheCreationInputTokens",
             "CacheCreation1hInputTokens", "ReasoningOutputTokens", "DedupKey", "Version")  # fmt: skip
    data = [
        (r.at, r.consumer, r.provider, r.model, r.model, int(r.billable), r.input, r.output,
         r.cache_read, r.cache_creation, r.cache_creation_1h, r.reasoning, f"k{i}", 1)
        for i, r in enumerate(batch)
    ]  # fmt: skip
    store.insert_columns("llm_usage", [list(c) for c in zip(*data, strict=True)], names)


def per_call(row: Row) -> dict[tuple[str, Decimal], int] | None:
    """The call's quantities by (token type, unit price); None when unpriced."""
    prices = price_of(row.provider, row.model, row.at, row.input)
    if prices is None:
        return None
    cache_write_1h = row.cache_creation_1h
    quantities = {
        "input": row.input - row.cache_read - row.cache_creation,
        "cache_read": row.cache_read,
        "cache_write": row.cache_creation - cache_write_1h,
        "cache_write_1h": cache_write_1h,
        "output": row.output - row.reasoning,
        "reasoning": row.reasoning,
    }
    return {(t, Decimal(prices[t])): q for t, q in quantities.items() if q}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(rows(), max_size=25))
def test_invoice_total_is_the_sum_of_per_call_costs(store: Store, tmp_path_factory, batch) -> None:
    store.command("TRUNCATE TABLE {db}.llm_usage")
    insert_rows(store, batch)
    pricing = load_pricing(write_config(tmp_path_factory.mktemp("cfg")), catalogue=CATALOGUE)
    invoices = compute_invoices(store, pricing, month("2026-03"), scope=Scope.ALL)
    cent = Decimal("0.01")
    for consumer in ("acme", "beta"):
        mine = [r for r in batch if r.consumer == consumer]
        billed = [r for r in mine if r.billable or BILLS_FAILED[consumer]]
        exact = Decimal(0)
        lines: dict[tuple[str, str, Decimal], int] = {}
        unpriced = 0
        for r in billed:
            charges = per_call(r)
            if charges is None:
                unpriced += 1
                continue
            for (token_type, price), quantity in charges.items():
                exact += quantity * price / 1_000_000
                key = (r.model, token_type, price)
                lines[key] = lines.get(key, 0) + quantity
        invoice = invoices.get(consumer)
        if invoice is None:
            assert not mine
            continue
        # the invoice's lines reproduce the per-call costs exactly (before rounding) …
        assert sum(line.quantity * line.unit_price_per_million / 1_000_000
                   for line in invoice.lines) == exact  # fmt: skip
        # … and its total follows the documented rounding
        subtotal = sum(
            (Decimal(q) * p / 1_000_000).quantize(cent, ROUND_HALF_UP)
            for (_m, _t, p), q in lines.items()
        )
        markup = (subtotal * MARKUP[consumer] / 100).quantize(cent, ROUND_HALF_UP)
        assert (invoice.subtotal, invoice.markup, invoice.total) == (
            subtotal, markup, subtotal + markup)  # fmt: skip
        # rounding moves the total by at most half a cent per line (+ the markup's)
        slack = Decimal("0.005") * (len(lines) + 1) * (1 + MARKUP[consumer] / 100)
        assert abs(invoice.total - exact * (1 + MARKUP[consumer] / 100)) <= slack
        assert sum(u.requests for u in invoice.unpriced) == unpriced
        assert invoice.failed_requests == sum(1 for r in mine if not r.billable)
