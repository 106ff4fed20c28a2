"""Incremental rating: a run reads and rates only the hours the rows inserted since the
last run can change — and never misses one (docs/rated-usage.md, "How it is kept current").

Each case compares the table with rating the counted usage on the fly (the reference
path) and checks which kind of run happened and how many hours it replaced. The hard
case is a duplicate that displaces the counted report when a merge then drops that
report before the run: its hour is found through the hour markers' key sets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from meterline.aggregator.invoices import month
from meterline.aggregator.invoices._service import compute_invoices, rate_invoices_on_the_fly
from meterline.aggregator.pricing import Pricing, parse_pricing_config
from meterline.aggregator.rated import _run, ensure_rated, stale_months
from meterline.aggregator.tenancy import Scope
from meterline.store import Store
from tests.aggregator._calls import Call, insert_calls

ALL = Scope.ALL


def _pricing(input_price: str) -> Pricing:
    model = {"provider": "openai", "model": "gpt-4o",
             "per_million_tokens": {"input": input_price, "output": "2"}}  # fmt: skip
    return Pricing.build(parse_pricing_config({"currency": "USD", "models": [model]}), None)


PRICING = _pricing("1")
MARCH = month("2026-03")


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def _seed(store: Store) -> None:
    """Usage in every hour of March 2–4, rated (a full run)."""
    insert_calls(store, [
        Call(at=_at(2, 0) + timedelta(hours=h, minutes=20), input=1000 + h, output=h,
             response_id=f"seed-{h}", consumer=("acme", "beta")[h % 2])
        for h in range(72)])  # fmt: skip
    runs = {r.month: r for r in ensure_rated(store, PRICING)}
    assert not runs[202603].incremental and runs[202603].hours_rated == 72


def _merge(store: Store) -> None:
    """What the background merges do, now: displaced reports are dropped."""
    store.command("OPTIMIZE TABLE {db}.llm_usage FINAL")


def _responses_by_hour(store: Store) -> dict[datetime, int]:
    _, rows = store.query("SELECT Hour, Responses FROM {db}.rated_hours FINAL WHERE Responses > 0")
    return {h.replace(tzinfo=UTC) if h.tzinfo is None else h: int(n) for h, n in rows}


def _assert_table_is_the_fly(store: Store) -> None:
    assert stale_months(store, PRICING) == []
    for period in (MARCH, month("2026-04"), month("2026-02")):
        assert compute_invoices(store, PRICING, period, scope=ALL) == (
            rate_invoices_on_the_fly(store, PRICING, period, scope=ALL)), period.label  # fmt: skip


def test_late_usage_with_an_old_timestamp_rates_its_hour_only(store: Store) -> None:
    _seed(store)
    insert_calls(store, [Call(at=_at(2, 5, 59), input=1_000_000, output=0)])  # days late
    [run] = ensure_rated(store, PRICING)
    assert run.incremental and (run.hours_rated, run.hours_added) == (0, 1)  # a delta
    _assert_table_is_the_fly(store)
    assert _responses_by_hour(store)[_at(2, 5)] == 2


def test_a_displaced_report_dropped_by_a_merge_before_the_run_is_not_counted(
    store: Store,
) -> None:
    """The counted report of ``seed-10`` (hour 10) is displaced by an earlier report of the
    same response (hour 7: the earliest wins), and a merge drops it before the run: no row
    of the month says where it was counted any more — the hour markers' key sets do."""
    _seed(store)
    insert_calls(store, [Call(at=_at(2, 7, 1), input=1010, output=10, response_id="seed-10",
                              consumer="acme")])  # fmt: skip
    _merge(store)
    _, [(left,)] = store.query("SELECT count() FROM {db}.llm_usage WHERE DedupKey LIKE '%seed-10'")
    assert left == 1  # the displaced report is gone
    [run] = ensure_rated(store, PRICING)
    assert run.incremental and run.hours_rated == 2  # hour 7 (new) and hour 10 (old)
    by_hour = _responses_by_hour(store)
    assert by_hour[_at(2, 7)] == 2 and _at(2, 10) not in by_hour
    _assert_table_is_the_fly(store)


def test_a_displacing_report_that_loses_changes_nothing(store: Store) -> None:
    _seed(store)
    insert_calls(
        store, [Call(at=_at(2, 12, 59), input=5, output=5, response_id="seed-10", consumer="acme")]
    )  # fmt: skip (later: loses)
    _merge(store)
    [run] = ensure_rated(store, PRICING)
    assert run.incremental
    _assert_table_is_the_fly(store)
    assert _responses_by_hour(store)[_at(2, 10)] == 1


def test_a_report_across_the_month_boundary_moves_the_response_to_the_other_month(
    store: Store,
) -> None:
    """April's counted report is displaced by an earlier report in March (its copy in
    April's partition wins there too); merges drop April's report before the run."""
    edge = datetime(2026, 4, 1, tzinfo=UTC)
    insert_calls(store, [Call(at=edge + timedelta(minutes=5), input=1_000_000,
                              response_id="edge")])  # fmt: skip
    _seed(store)  # rates March and April (full)
    april = compute_invoices(store, PRICING, month("2026-04"), scope=ALL)
    assert april["acme"].total == Decimal("1.00")
    insert_calls(store, [Call(at=edge - timedelta(minutes=5), input=1_000_000,
                              response_id="edge")])  # fmt: skip
    _merge(store)
    runs = ensure_rated(store, PRICING)
    # new to March (its copy of April's report was dropped by the merge): added there;
    # April's hour is rated again without it
    assert {r.month: (r.incremental, r.hours_rated, r.hours_added) for r in runs} == {
        202603: (True, 0, 1), 202604: (True, 1, 0)}  # fmt: skip
    _assert_table_is_the_fly(store)
    assert "acme" not in compute_invoices(store, PRICING, month("2026-04"), scope=ALL)


def test_a_run_with_nothing_new_reads_no_hour_and_a_mutation_rates_in_full(
    store: Store,
) -> None:
    _seed(store)
    _merge(store)  # a merge alone changes nothing counted: no run
    assert ensure_rated(store, PRICING) == []
    store.command("DELETE FROM {db}.llm_usage WHERE DedupKey LIKE '%seed-3'")
    [run] = ensure_rated(store, PRICING)
    assert not run.incremental and run.hours_rated == 1
    _assert_table_is_the_fly(store)


def test_a_price_change_rates_in_full(store: Store) -> None:
    _seed(store)
    dearer = _pricing("3")
    insert_calls(store, [Call(at=_at(3, 1, 1), input=7, output=7)])
    [run] = ensure_rated(store, dearer)
    assert not run.incremental and run.hours_rated == 72
    assert compute_invoices(store, dearer, MARCH, scope=ALL) == (
        rate_invoices_on_the_fly(store, dearer, MARCH, scope=ALL))  # fmt: skip


def test_many_small_runs_with_merges_between_equal_the_fly(store: Store) -> None:
    """Inserts, displacing duplicates (earlier, later, other hours and days), merges and
    runs interleaved, as under the rating loop; after each run the table equals the fly."""
    _seed(store)
    for step in range(6):
        h = 3 + 11 * step
        insert_calls(store, [
            Call(at=_at(2, 0) + timedelta(hours=h - 2 - step, minutes=1), input=77 + step,
                 output=step, response_id=f"seed-{h}", consumer=("acme", "beta")[h % 2]),
            Call(at=_at(2, 0) + timedelta(hours=h + 1, minutes=59), input=5, output=1,
                 response_id=f"seed-{h + 1}", consumer=("acme", "beta")[(h + 1) % 2]),
            Call(at=_at(2, 0) + timedelta(hours=h, minutes=40), input=100, output=50,
                 response_id=f"new-{step}"),
        ])  # fmt: skip
        if step % 2:
            _merge(store)
        [run] = ensure_rated(store, PRICING)
        assert run.incremental
        _assert_table_is_the_fly(store)


def test_parts_removed_then_new_usage_rates_in_full(store: Store) -> None:
    """A dropped partition (or ``TRUNCATE``) removes rated usage without a new block or a
    mutation; new usage before the next run must not hide it."""
    _seed(store)
    store.command("ALTER TABLE {db}.llm_usage DROP PARTITION 202603")
    insert_calls(store, [Call(at=_at(3, 9, 9), input=1_000_000, output=0)])
    runs = {r.month: r for r in ensure_rated(store, PRICING)}
    assert not runs[202603].incremental
    _assert_table_is_the_fly(store)
    assert compute_invoices(store, PRICING, MARCH, scope=ALL)["acme"].total == Decimal("1.00")


def _runs_by_hour(store: Store) -> dict[datetime, int]:
    _, rows = store.query("SELECT Hour, length(Runs) FROM {db}.rated_hours FINAL")
    return {h.replace(tzinfo=UTC) if h.tzinfo is None else h: int(n) for h, n in rows}


def test_late_responses_spread_over_the_month_are_added_not_rated_again(
    store: Store, monkeypatch
) -> None:
    """Responses new to the month add their own rows to their hours (a delta run): the
    cost follows the late rows, not the hours they touch; an hour that collected
    ``MAX_RUNS`` runs is rated whole again (one run)."""
    monkeypatch.setattr(_run, "MAX_RUNS", 3)
    _seed(store)
    spread = [Call(at=_at(2, 0) + timedelta(hours=h, minutes=41), input=300 + h, output=h,
                   consumer=("acme", "beta", "gamma")[h % 3], response_id=f"late-{h}")
              for h in range(1, 72, 4)]  # fmt: skip
    insert_calls(store, spread)
    [run] = ensure_rated(store, PRICING)
    assert run.incremental
    assert (run.hours_rated, run.hours_added, run.responses_added) == (0, 18, 18)
    _assert_table_is_the_fly(store)
    assert _runs_by_hour(store)[_at(2, 1)] == 2 and _runs_by_hour(store)[_at(2, 2)] == 1
    for n in range(2):  # hour 1 gets a third run, then is rated whole
        insert_calls(store, [Call(at=_at(2, 1, 50 + n), input=9, output=9)])
        [run] = ensure_rated(store, PRICING)
        assert (run.hours_rated, run.hours_added) == ((0, 1), (1, 0))[n]
        _assert_table_is_the_fly(store)
    assert _runs_by_hour(store)[_at(2, 1)] == 1
    assert _responses_by_hour(store)[_at(2, 1)] == 4


def test_a_late_call_of_a_partly_priced_model_rates_its_hour_whole(store: Store) -> None:
    """A model priced for input only: an hour's calls are unpriced once any call of the
    group has output tokens — a property of the hour's group, not of the new call, so
    the call is not added as a delta."""
    half = {"provider": "openai", "model": "half", "per_million_tokens": {"input": "1"}}
    pricing = Pricing.build(parse_pricing_config({"currency": "USD", "models": [half]}), None)
    insert_calls(store, [Call(at=_at(2, 3, 1), model="half", input=1_000_000, output=0)])
    ensure_rated(store, pricing)
    assert compute_invoices(store, pricing, MARCH, scope=ALL)["acme"].total == Decimal("1.00")
    insert_calls(store, [Call(at=_at(2, 3, 2), model="half", input=5, output=1)])
    [run] = ensure_rated(store, pricing)
    assert (run.hours_rated, run.hours_added) == (1, 0)
    invoice = compute_invoices(store, pricing, MARCH, scope=ALL)["acme"]
    assert invoice == rate_invoices_on_the_fly(store, pricing, MARCH, scope=ALL)["acme"]
    assert invoice.total == 0 and invoice.unpriced[0].requests == 2


def test_two_runs_adding_the_same_responses_count_them_once(store: Store) -> None:
    """Two processes rating one store (replicas) both plan the same late response as a
    delta; the one that marks second finds it in the marker, fails, and rates again."""
    _seed(store)
    insert_calls(store, [Call(at=_at(3, 4, 4), input=1_000_000, output=0)])
    [(month_, signature, previous)] = _run._stale(store, PRICING, None, None)
    other: list[_run.MonthRun] = []
    started: list[int] = []

    def other_replica(step: str, m: int) -> None:
        if step == "rows" and not started:  # between this run's rows and its markers
            started.append(1)
            other.append(_run.rate_month(store, PRICING, m, signature, previous))

    _run._after_step = other_replica
    try:
        again = _run._rate_with_retry(store, PRICING, month_, signature, previous)
    finally:
        _run._after_step = None
    assert other[0].hours_added == 1  # the other replica added it first
    assert (again.hours_rated, again.hours_added) == (1, 0)  # the retry rated the hour whole
    _assert_table_is_the_fly(store)
    assert _responses_by_hour(store)[_at(3, 4)] == 2
