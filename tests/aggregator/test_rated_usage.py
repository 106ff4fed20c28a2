"""The rated-usage table equals rating the counted usage on the fly — to the exact Decimal.

The reference is the on-the-fly path every reader used before the table
(:func:`rate_invoices_on_the_fly`, :func:`usage_costs_on_the_fly`, :func:`rate_usage`):
the same matching, Python ``Decimal`` arithmetic. Usage is written as spans (the view
ranks reports and stores month-edge copies), over random hours of three months with
boundaries favoured; then prices change, late data arrives in rated hours, and later
duplicates displace earlier reports.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterline.aggregator.invoices import between, month
from meterline.aggregator.invoices._service import (
    compute_invoices,
    rate_invoices_on_the_fly,
    rate_usage,
)
from meterline.aggregator.invoices._usage_costs import usage_costs, usage_costs_on_the_fly
from meterline.aggregator.pricing import (
    MONEY_CONTEXT,
    Catalogue,
    Pricing,
    parse_pricing_config,
)
from meterline.aggregator.pricing._catalogue import PriceScaleError
from meterline.aggregator.queries.usage import UsageFilter
from meterline.aggregator.rated import (
    RatingError,
    RatingLoop,
    _run,
    ensure_rated,
    rate_month,
    stale_months,
)
from meterline.aggregator.rated._read import current_monthly_sums
from meterline.aggregator.rated._run import _signatures
from meterline.aggregator.tenancy import Scope
from meterline.store import Store
from tests.aggregator._calls import Call, insert_calls

CATALOGUE = Catalogue.bundled()
ALL = Scope.ALL
ROOT = Path(__file__).resolve().parents[2]
MONTHS = ("2026-02", "2026-03", "2026-04")
BASE = datetime(2026, 2, 27, tzinfo=UTC)
EDGES = [datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC),
         datetime(2026, 3, 15, 13, tzinfo=UTC)]  # fmt: skip
MODELS = [("openai", "gpt-4o", "gpt-4o-2024-08-06"), ("openai", "o3", None),
          ("anthropic", "claude-sonnet-4-20250514", None), ("openai", "mystery-1", None),
          ("openai", "half-priced", None)]  # fmt: skip


def _price(decimals: int = 24) -> st.SearchStrategy[str]:
    return st.builds(
        lambda whole, digits: f"{whole}.{digits}" if digits else str(whole),
        st.integers(0, 60),
        st.text("0123456789", max_size=decimals),
    )


@st.composite
def pricing_data(draw: st.DrawFn) -> dict[str, Any]:
    def prices(*types: str) -> dict[str, str]:
        return {t: draw(_price()) for t in types}

    return {
        "currency": "USD",
        "models": [
            {"provider": "openai", "model": "gpt-4o",
             "per_million_tokens": prices("input", "cache_read", "output")},
            {"provider": "openai", "model": "o3",
             "per_million_tokens": prices("input", "output", "reasoning")},
            {"provider": "openai", "model": "half-priced",  # no output price: unpriced
             "per_million_tokens": prices("input")},  # when a group has output tokens
        ],  # claude: the catalogue's prices (dated, tiered); mystery-1: unpriced
        "plans": {
            "default": {"markup_percent": draw(st.sampled_from(["0", "12.5"]))},
            "consumers": {
                "acme": {"markup_percent": draw(_price(decimals=8))},
                "beta": {"bill_failed_requests": True},
            },
        },
    }  # fmt: skip


def _pricing(data: dict[str, Any]) -> Pricing:
    return Pricing.build(parse_pricing_config(data), CATALOGUE)


@st.composite
def instants(draw: st.DrawFn) -> datetime:
    near_edge = st.builds(
        lambda edge, ns: edge + timedelta(microseconds=ns),
        st.sampled_from(EDGES),
        st.integers(-2 * 3600 * 10**6, 2 * 3600 * 10**6),
    )
    anywhere = st.integers(0, 36 * 86400).map(lambda s: BASE + timedelta(seconds=s))
    hour_edge = st.builds(
        lambda h, d: BASE + timedelta(hours=h) + timedelta(microseconds=d),
        st.integers(0, 36 * 24),
        st.sampled_from([-1, 0, 1]),
    )
    return draw(st.one_of(near_edge, anywhere, hour_edge))


@st.composite
def calls(draw: st.DrawFn, at: datetime | None = None) -> Call:
    provider, model, response_model = draw(st.sampled_from(MODELS))
    input_tokens = draw(st.one_of(st.integers(0, 5000), st.integers(199_990, 200_010)))
    cache_read = draw(st.integers(0, input_tokens))
    cache_creation = draw(st.integers(0, input_tokens - cache_read))
    output = draw(st.sampled_from([0, draw(st.integers(0, 30_000))]))
    if model == "half-priced":  # always output tokens: unpriced in every hour (see
        output = max(output, 1)  # test_a_group_is_unpriced_per_hour for the other case)
    return Call(
        at=at or draw(instants()),
        consumer=draw(st.sampled_from(["acme", "beta", ""])),
        feature=draw(st.sampled_from(["", "chat", "search"])),
        provider=provider,
        model=model,
        response_model=response_model,
        input=input_tokens,
        output=output,
        cache_read=cache_read,
        cache_creation=cache_creation if provider == "anthropic" else 0,
        cache_creation_1h=draw(st.integers(0, cache_creation)) if provider == "anthropic" else 0,
        reasoning=draw(st.integers(0, output)),
        error=draw(st.sampled_from([None, None, None, "500"])),
    )


def _exact_by_hour(store: Store, pricing: Pricing, period: Any) -> dict[tuple[Any, ...], Any]:
    """On the fly: exact amount and markup per hour, consumer, feature, models, token type."""
    f = UsageFilter(start=period.start, end=period.end, scope=ALL)
    _, rated = rate_usage(store, pricing, f, extra_keys=("utc_hour", "feature"))
    out: dict[tuple[Any, ...], list[Decimal]] = {}
    with localcontext(MONEY_CONTEXT):
        _sum_charges(rated, pricing, out)
    return {k: tuple(v) for k, v in out.items() if v[0]}


def _sum_charges(rated: Any, pricing: Pricing, out: dict[tuple[Any, ...], list[Decimal]]) -> None:
    for item in rated:
        g = item.group
        percent = pricing.config.plan_for(g.consumer).markup_percent
        for charge in item.charges or ():
            hour = g.extra[0].replace(tzinfo=None)
            key = (hour, g.consumer, g.extra[1], g.provider, g.response_model,
                   g.request_model, charge.token_type)  # fmt: skip
            slot = out.setdefault(key, [Decimal(0), Decimal(0)])
            slot[0] += charge.amount
            slot[1] += charge.amount * percent / 100


def _table_by_hour(store: Store, period: Any) -> dict[tuple[Any, ...], Any]:
    _, rows = store.query(
        "SELECT Hour, ConsumerId, Feature, Provider, ResponseModel, RequestModel, TokenType,"
        " sum(Amount), sum(MarkupAmount) FROM {db}.rated_usage_current"
        " WHERE Hour >= {s:DateTime64(0, 'UTC')} AND Hour < {e:DateTime64(0, 'UTC')}"
        " AND Amount IS NOT NULL"
        " GROUP BY ALL",
        {"s": period.start, "e": period.end},
    )
    return {
        (r[0].replace(tzinfo=None), *r[1:7]): (Decimal(r[7]), Decimal(r[8])) for r in rows if r[7]
    }


GROUPINGS = [(), ("consumer",), ("consumer", "feature", "model"), ("hour",), ("day", "provider")]


def assert_table_is_the_fly(store: Store, pricing: Pricing) -> None:
    ensure_rated(store, pricing)  # what the loop does; then readers read the table
    assert stale_months(store, pricing) == []
    hours = between(EDGES[0] - timedelta(hours=5), EDGES[2])  # read from the hourly rows
    # whole months read the monthly sums (checked current), the other whole days the daily
    quarter = between(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))
    ragged = between(BASE, datetime(2026, 4, 1, tzinfo=UTC))  # Feb's last days + March
    assert current_monthly_sums(store, quarter.start, quarter.end) == [202602, 202603, 202604]
    for period in (*(month(label) for label in MONTHS), hours, quarter, ragged):
        assert compute_invoices(store, pricing, period, scope=ALL) == rate_invoices_on_the_fly(
            store, pricing, period, scope=ALL
        ), period.label
    for label in MONTHS:
        period = month(label)
        assert _table_by_hour(store, period) == _exact_by_hour(store, pricing, period), label
    assert stale_months(store, pricing) == []
    for group_by in GROUPINGS:
        for f in (
            UsageFilter(group_by=group_by, scope=ALL),
            UsageFilter(start=EDGES[0], end=EDGES[1], group_by=group_by, feature="chat", scope=ALL),
        ):
            table = usage_costs(store, pricing, f)
            fly = usage_costs_on_the_fly(store, pricing, f)
            keys = set(table.by_key) | set(fly.by_key)
            for key in keys:
                assert table.columns(key) == fly.columns(key), (group_by, key)


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.lists(calls(), min_size=1, max_size=30),
    late=st.lists(calls(), max_size=10),
    displacing=st.lists(st.tuples(st.integers(0, 29), st.integers(-30 * 3600, -1)), max_size=6),
    before=pricing_data(),
    after=pricing_data(),
    change_at=instants(),
    merge=st.booleans(),
)
def test_table_money_equals_on_the_fly_rating(
    store: Store, first, late, displacing, before, after, change_at, merge
) -> None:
    store.command("TRUNCATE TABLE {db}.otel_traces")
    store.command("TRUNCATE TABLE {db}.llm_usage")
    first = [
        Call(**{**c.__dict__, "response_id": f"r{i}-{c.at.timestamp()}"})
        for i, c in enumerate(first)
    ]
    insert_calls(store, first)
    pricing = _pricing(before)
    assert_table_is_the_fly(store, pricing)

    # a price change (effective at any instant, mid-hour too): everything is re-rated
    for entry in after["models"]:
        entry["effective_from"] = change_at.isoformat()
    changed = _pricing({**before, "models": before["models"] + after["models"]})
    assert_table_is_the_fly(store, changed)

    # late data into rated hours, and reports that displace earlier ones (same response,
    # earlier timestamp: the earliest report wins), across hour/day/month boundaries
    hours = [c.at.replace(minute=0, second=0, microsecond=0) for c in first]
    late_calls = [
        Call(**{**c.__dict__, "at": hours[i % len(hours)] + timedelta(minutes=i)})
        for i, c in enumerate(late)
    ]
    dupes = [
        Call(**{**first[i % len(first)].__dict__, "at": first[i % len(first)].at
                + timedelta(seconds=offset), "input": 7, "output": 3, "cache_read": 0,
                "cache_creation": 0, "cache_creation_1h": 0, "reasoning": 0})
        for i, offset in displacing
    ]  # fmt: skip
    insert_calls(store, late_calls + dupes)
    if merge:  # displaced reports dropped before the (incremental) run
        store.command("OPTIMIZE TABLE {db}.llm_usage FINAL")
    assert_table_is_the_fly(store, changed)


def test_rating_a_current_month_again_replaces_nothing(store: Store) -> None:
    insert_calls(store, [Call(at=datetime(2026, 3, 2, 10, tzinfo=UTC), input=100, output=10)])
    pricing = _pricing({"currency": "USD"})
    runs = ensure_rated(store, pricing)
    assert [(r.month, r.hours_rated) for r in runs] == [(202603, 1)]
    _, [(rows,)] = store.query("SELECT count() FROM {db}.rated_usage")
    assert ensure_rated(store, pricing) == []  # current: nothing to do
    again = rate_month(store, pricing, 202603, _signatures(store)[202603])
    assert again.hours_rated == 0  # fingerprints equal: no hour rewritten
    assert store.query("SELECT count() FROM {db}.rated_usage")[1] == [(rows,)]


def test_unpriced_usage_has_no_amount_never_zero(store: Store) -> None:
    insert_calls(store, [Call(at=datetime(2026, 3, 2, 10, tzinfo=UTC), model="mystery-9",
                              input=100, output=10)])  # fmt: skip
    pricing = _pricing({"currency": "USD"})
    ensure_rated(store, pricing)
    _, rows = store.query(
        "SELECT Status, TokenType, Quantity, Requests, Amount, MarkupAmount, UnitPricePerMillion"
        " FROM {db}.rated_usage_current ORDER BY TokenType"
    )
    assert rows == [
        ("unpriced", "input", 100, 1, None, None, None),
        ("unpriced", "output", 10, 0, None, None, None),
    ]


def test_a_reader_sees_usage_that_arrived_after_the_last_run(store: Store) -> None:
    pricing = _pricing({"currency": "USD", "models": [
        {"provider": "openai", "model": "gpt-4o",
         "per_million_tokens": {"input": "1", "output": "2"}}]})  # fmt: skip
    at = datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)
    insert_calls(store, [Call(at=at, input=1_000_000, output=0)])
    ensure_rated(store, pricing)
    assert compute_invoices(store, pricing, month("2026-03"), scope=ALL)["acme"].total == Decimal(
        "1.00"
    )
    insert_calls(store, [Call(at=at, input=0, output=1_000_000)])  # the same (rated) hour
    assert stale_months(store, pricing) != []  # not rated yet: read on the fly, fresh
    assert compute_invoices(store, pricing, month("2026-03"), scope=ALL)["acme"].total == Decimal(
        "3.00"
    )


def test_a_duplicate_across_a_month_boundary_counts_once_in_the_winners_month(
    store: Store,
) -> None:
    pricing = _pricing({"currency": "USD", "models": [
        {"provider": "openai", "model": "gpt-4o",
         "per_million_tokens": {"input": "1", "output": "2"}}]})  # fmt: skip
    edge = datetime(2026, 4, 1, tzinfo=UTC)
    insert_calls(store, [Call(at=edge + timedelta(minutes=5), input=1_000_000,
                              response_id="same")])  # fmt: skip
    assert compute_invoices(store, pricing, month("2026-04"), scope=ALL)["acme"].total == Decimal(
        "1.00"
    )
    assert "acme" not in compute_invoices(store, pricing, month("2026-03"), scope=ALL)
    # a report of the same response 10 minutes earlier, in March, arrives later: it wins
    insert_calls(store, [Call(at=edge - timedelta(minutes=5), input=1_000_000,
                              response_id="same")])  # fmt: skip
    ensure_rated(store, pricing)
    march = compute_invoices(store, pricing, month("2026-03"), scope=ALL)
    april = compute_invoices(store, pricing, month("2026-04"), scope=ALL)
    assert march["acme"].total == Decimal("1.00")
    assert "acme" not in april
    _, rows = store.query(
        "SELECT toYYYYMM(Hour, 'UTC'), sum(Requests) FROM {db}.rated_usage_current GROUP BY 1"
    )
    assert rows == [(202603, 1)]


def test_a_price_with_more_decimals_than_the_table_holds_is_refused(store: Store) -> None:
    """The configuration and the catalogue refuse such prices at load (tests/config,
    test_prices_update); the rating refuses them too (never truncates) should one reach it —
    here a catalogue built without the check. Readers keep rating on the fly, exactly."""
    fine = "0." + "1" * 25
    raw = [{"id": "openai", "name": "OpenAI", "api_pattern": "x", "models": [
        {"id": "gpt-4o", "match": {"equals": "gpt-4o"},
         "prices": {"input_mtok": fine, "output_mtok": "1"}}]}]  # fmt: skip
    with pytest.raises(PriceScaleError, match=r"^t: openai/gpt-4o input_mtok 0\.1{25} has more"):
        Catalogue.from_raw(raw, source="t")
    from genai_prices.types import _providers_from_raw

    unchecked = Catalogue(_providers_from_raw(raw), source="t", checked=True)
    pricing = Pricing.build(parse_pricing_config({"currency": "USD"}), unchecked)
    insert_calls(store, [Call(at=datetime(2026, 3, 2, 10, tzinfo=UTC), input=10, output=1)])
    with pytest.raises(RatingError, match=r"more than 24 decimals"):
        ensure_rated(store, pricing)
    assert stale_months(store, pricing) != []  # so readers use the on-the-fly path
    assert compute_invoices(store, pricing, month("2026-03"), scope=ALL) == (
        rate_invoices_on_the_fly(store, pricing, month("2026-03"), scope=ALL))  # fmt: skip


def _child(data_dir: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.aggregator._rating_child", str(data_dir), *args],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


STEPS = ["scan", "rows", "markers", "days", "month rows", "month"]


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_during_a_run_leaves_old_or_new_rows_never_half(tmp_path: Path, step: str) -> None:
    seeded = _child(tmp_path, "seed")["invoices"]
    _child(tmp_path, "late")
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.aggregator._rating_child", str(tmp_path), "rate", step],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert json.loads(child.stdout.readline()) == {"stalled": step}
        child.send_signal(signal.SIGKILL)  # a real kill -9, mid-run
        assert child.wait(30) == -signal.SIGKILL
    finally:
        child.kill()
    seen = _child(tmp_path, "check")
    assert 202603 in seen["stale"]  # the killed run did not record the month
    assert seen["on_the_fly"] != seeded  # the late data changed the invoices
    after = STEPS[STEPS.index(step) + 1 :]
    # hourly rows: the old ones in force until the run's markers, then the new ones, whole
    new_hours = step not in ("scan", "rows")
    assert seen["as_read_hourly"] == (seen["on_the_fly"] if new_hours else seeded)
    # rows not in force (the killed run's, or the replaced ones before their deletion)
    assert (seen["orphan_rows"] > 0) == (step in ("rows", "markers"))
    # daily sums: rebuilt from the hours in force, or old
    assert seen["as_read_daily"] == (seen["on_the_fly"] if "days" not in after else seeded)
    # monthly sums (what monthly invoices read): current only after their marker; a reader
    # of the table never takes them while they lag behind the days (it reads the days)
    assert seen["monthly_sums_current"] == (step == "month" or "days" in after)
    assert seen["as_read_now"] == seen["as_read_daily"]
    # restart: the next run finishes the work; equal to rating on the fly
    assert seen["after_catch_up"] == seen["on_the_fly"]
    assert seen["monthly_after"] == [202603]
    assert 202603 not in seen["stale_after"]  # (April's copies of March's end: not read)


def test_the_loop_rates_usage_as_it_arrives_without_a_reader(store: Store) -> None:
    pricing = _pricing({"currency": "USD"})
    loop = RatingLoop(store, lambda: pricing, interval=0.05)
    loop.start()
    try:
        for n in range(3):  # each batch lands in a month the loop rated already
            insert_calls(store, [Call(at=datetime(2026, 3, 2, 10, n, tzinfo=UTC), input=10)])
            deadline = time.monotonic() + 60
            while stale_months(store, pricing) and time.monotonic() < deadline:
                time.sleep(0.05)
            _, [(requests,)] = store.query("SELECT sum(Requests) FROM {db}.rated_usage_current")
            assert requests == n + 1
    finally:
        loop.stop()
    assert loop.last_error is None


def test_a_group_is_unpriced_per_hour(store: Store) -> None:
    """A model priced for input only: its calls with output tokens are unpriced, per hour
    (on the fly, the whole period's group was: a documented change, docs/rated-usage.md)."""
    pricing = _pricing({"currency": "USD", "models": [
        {"provider": "openai", "model": "half", "per_million_tokens": {"input": "1"}}]})  # fmt: skip
    insert_calls(store, [
        Call(at=datetime(2026, 3, 2, 10, tzinfo=UTC), model="half", input=1_000_000),
        Call(at=datetime(2026, 3, 2, 11, tzinfo=UTC), model="half", input=5, output=1)])  # fmt: skip
    ensure_rated(store, pricing)
    invoice = compute_invoices(store, pricing, month("2026-03"), scope=ALL)["acme"]
    assert invoice.total == Decimal("1.00")  # the 10:00 call: priced
    assert [(u.requests, u.input_tokens, u.output_tokens) for u in invoice.unpriced] == [(1, 5, 1)]


def test_usage_in_a_new_price_cell_during_a_run_is_rated_by_a_retry(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="meterline.aggregator.rated._run")
    pricing = _pricing({"currency": "USD"})
    insert_calls(store, [Call(at=datetime(2026, 3, 2, 10, tzinfo=UTC), input=10)])
    arrived = []

    def late_new_model(step: str, month: int) -> None:
        if step == "scan" and not arrived:  # between the scan and the insert
            arrived.append(1)
            insert_calls(store, [Call(at=datetime(2026, 3, 2, 10, 30, tzinfo=UTC),
                                      model="claude-sonnet-4-6", provider="anthropic",
                                      input=300_000, output=5)])  # fmt: skip

    _run._after_step = late_new_model
    try:
        assert [r.month for r in ensure_rated(store, pricing)] == [202603]
    finally:
        _run._after_step = None
    assert arrived
    assert "rating 202603 again: usage arrived in a new price cell" in caplog.text
    assert_table_is_the_fly(store, pricing)
