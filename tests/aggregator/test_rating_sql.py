"""The rating query as a string, and its splits (dates, tiers, time of day) on chdb."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from meterline.aggregator.invoices import compute_invoices, month
from meterline.aggregator.pricing import Catalogue, RatingGrid, load_pricing
from meterline.aggregator.queries.rating import rating_sql
from meterline.aggregator.queries.usage import UsageFilter
from meterline.aggregator.tenancy import Scope
from meterline.store import Store
from meterline.store.usage_schema import COUNTED_SELECT
from tests.aggregator._calls import Call, insert_calls, utc


def test_sql_binds_every_value_and_reads_final() -> None:
    f = UsageFilter(
        start=utc(2026, 3, 1), end=utc(2026, 4, 1), consumer="x'; DROP TABLE t; --", scope=Scope.ALL
    )
    grid = RatingGrid(
        change_points=(utc(2026, 2, 1), utc(2026, 3, 16), utc(2026, 5, 1)),
        thresholds=(128000, 200000),
        time_of_day=((("deepseek", "deepseek-chat", "deepseek-chat"),), (1800, 59400)),
    )
    sql, params = rating_sql(f, grid, extra_keys=("day",))
    assert f"FROM (\n{COUNTED_SELECT}\n)" in sql
    assert "DROP" not in sql and "deepseek" not in sql
    assert "sum(toUInt128(InputTokens - _cr - _cw)) AS input" in sql  # cannot wrap
    assert sql.endswith("GROUP BY consumer, provider, response_model, request_model, billable, "
                        "segment, tod, tier, k_day, invalid")  # fmt: skip
    # only the change point inside the period splits it
    assert "multiIf(Timestamp < {cp0:DateTime64(9, 'UTC')}, 0, 1) AS segment" in sql
    assert params["cp0"] == utc(2026, 3, 16) and "cp1" not in params
    assert "multiIf(InputTokens > {tt1:UInt64}, 2, InputTokens > {tt0:UInt64}, 1, 0)" in sql
    assert params["tod_keys"] == [("deepseek", "deepseek-chat", "deepseek-chat")]
    assert "toStartOfDay(Timestamp, 'UTC') AS k_day" in sql
    assert "least(CacheCreation1hInputTokens, _cw) AS _cw1h" in sql


def test_time_of_day_prices_and_flagged_subsets(store: Store) -> None:
    # deepseek-chat is cheaper off-peak (16:30–00:30 UTC) in the catalogue
    insert_calls(store, [
        Call(utc(2026, 3, 2, 12), provider="deepseek", model="deepseek-chat", input=1_000_000),
        Call(utc(2026, 3, 2, 20), provider="deepseek", model="deepseek-chat", input=1_000_000),
        # a subset larger than its total is flagged invalid: listed, never billed
        Call(utc(2026, 3, 3), model="gpt-4o", input=100, cache_read=500, output=10,
             reasoning=5),
        Call(utc(2026, 3, 3), model="gpt-4o", input=100, output=10, reasoning=50),
        Call(utc(2026, 3, 3), model="gpt-4o", input=100, cache_read=40, output=10),
    ])  # fmt: skip
    pricing = load_pricing(None, catalogue=Catalogue.bundled())
    invoice = compute_invoices(store, pricing, month("2026-03"), scope=Scope.ALL)["acme"]
    deepseek = [(x.quantity, x.unit_price_per_million) for x in invoice.lines
                if x.model == "deepseek-chat"]  # fmt: skip
    model = pricing.catalogue.find("deepseek", "deepseek-chat")
    peak = model.prices_at(datetime(2026, 3, 2, 12, tzinfo=UTC)).per_million_tokens["input"]
    off = model.prices_at(datetime(2026, 3, 2, 20, tzinfo=UTC)).per_million_tokens["input"]
    assert peak != off
    assert sorted(deepseek) == sorted([(1_000_000, peak), (1_000_000, off)])
    gpt = {x.token_type: x.quantity for x in invoice.lines if x.model == "gpt-4o"}
    assert gpt == {"input": 60, "cache_read": 40, "output": 10}
    assert [(u.model, u.reason, u.requests) for u in invoice.invalid] == [
        ("gpt-4o", "gen_ai.usage.cache_read + cache_creation.input_tokens: more than input_tokens", 1),
        ("gpt-4o", "gen_ai.usage.reasoning.output_tokens: more than output_tokens", 1),
    ]  # fmt: skip
    assert invoice.total == sum((x.amount for x in invoice.lines), Decimal(0))


def test_grid_learns_new_models(store: Store) -> None:
    """The rating query starts from the models rated before; a new model whose price
    changes inside the period makes it run again with the needed split."""
    pricing = load_pricing(None, catalogue=Catalogue.bundled())
    insert_calls(store, [Call(utc(2026, 3, 2), model="gpt-4o", input=1000)])
    compute_invoices(store, pricing, month("2026-03"), scope=Scope.ALL)
    assert pricing.book.seen == {("openai", "gpt-4o", "gpt-4o")}
    # claude-sonnet-4-6's catalogue price changes on 2026-03-13 (tiers dropped)
    sonnet = dict(provider="anthropic", model="claude-sonnet-4-6", input=300_000)
    insert_calls(store, [Call(utc(2026, 3, 12), **sonnet), Call(utc(2026, 3, 14), **sonnet)])
    invoice = compute_invoices(store, pricing, month("2026-03"), scope=Scope.ALL)["acme"]
    prices = sorted(x.unit_price_per_million for x in invoice.lines
                    if x.model == "claude-sonnet-4-6" and x.token_type == "input")  # fmt: skip
    assert prices == [Decimal("3"), Decimal("6")]
