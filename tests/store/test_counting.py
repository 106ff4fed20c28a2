"""Counted once on every boundary and for every range (docs/counting.md).

Reports of one response are spans with the same provider and response id. Each test
writes them in separate inserts (separate parts, as two processes would), reads totals
through the store's ``llm_usage_counted`` view, the API and invoices, then merges
everything (``OPTIMIZE … FINAL``) and reads again.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterline.aggregator.app import create_app
from meterline.aggregator.invoices import compute_invoices, month
from meterline.aggregator.pricing import Catalogue, load_pricing
from meterline.aggregator.queries import READ_SETTINGS
from meterline.aggregator.tenancy import Scope
from meterline.settings import ServerSettings
from meterline.store import Store
from meterline.store.usage_schema import SCOPE, SKEW

_ids = itertools.count(1)
NS = 10**9
AUTH = {"authorization": "Bearer k"}


def ns(at: datetime) -> int:
    return int(at.timestamp()) * NS + at.microsecond * 1000


def report(
    store: Store,
    at: datetime | int,
    *,
    response: str,
    ours: bool = True,
    estimated: bool = False,
    input_tokens: int = 100,
    feature: str = "chat",
    consumer: str = "acme",
) -> None:
    """One report (span) of ``response``, in an insert of its own."""
    n = next(_ids)
    attrs = {
        "gen_ai.provider.name": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.id": response,
        "gen_ai.usage.input_tokens": str(input_tokens),
        "gen_ai.usage.output_tokens": "10",
        "meterline.consumer.id": consumer,
        "meterline.feature": feature,
    }
    if estimated:
        attrs["meterline.usage.estimated"] = "true"
    names = ["Timestamp", "TraceId", "SpanId", "ScopeName", "SpanAttributes", "StatusCode"]
    ts = at if isinstance(at, int) else ns(at)
    scope = SCOPE if ours else "opentelemetry.instrumentation.openai_v2"
    columns = [[ts], [f"{n:032x}"], [f"{n:016x}"], [scope], [attrs], ["STATUS_CODE_UNSET"]]
    store.insert_columns("otel_traces", columns, names)


def counted(store: Store, start: datetime, end: datetime, **where: str) -> list[dict[str, Any]]:
    """The counted rows of ``[start, end)`` (optionally filtered), by response."""
    conditions = " AND ".join(f"{k} = {{{k}:String}}" for k in where) or "1"
    return store.query_dicts(
        "SELECT ResponseId, Timestamp, InputTokens, SpanId, Feature "
        "FROM {db}.llm_usage_counted(start = {s:DateTime64(9, 'UTC')}, "
        f"end = {{e:DateTime64(9, 'UTC')}}) WHERE {conditions} ORDER BY ResponseId",
        {"s": start, "e": end, **where},
    )


def optimize(store: Store) -> None:
    store.command("OPTIMIZE TABLE {db}.llm_usage FINAL")


def usage(client: TestClient, start: datetime, end: datetime) -> tuple[int, int]:
    params = {"from": start.isoformat(), "to": end.isoformat()}
    rows = client.get("/v1/usage", params=params, headers=AUTH).json()["rows"]
    return (rows[0]["requests"], rows[0]["input_tokens"]) if rows else (0, 0)


BOUNDARIES = {
    "hour": datetime(2026, 3, 10, 12, tzinfo=UTC),
    "day": datetime(2026, 3, 11, tzinfo=UTC),
    "month": datetime(2026, 4, 1, tzinfo=UTC),
    "year": datetime(2027, 1, 1, tzinfo=UTC),
}


@pytest.mark.parametrize("winner_side", ["after", "before"])
@pytest.mark.parametrize("boundary", list(BOUNDARIES), ids=list(BOUNDARIES))
def test_a_pair_across_a_boundary_counts_once(
    store: Store, boundary: str, winner_side: str
) -> None:
    """The SDK's span and meterline's, 50 ms either side of the boundary: the response
    counts once, in the range that holds meterline's report (the winner)."""
    b = BOUNDARIES[boundary]
    before, after = b - timedelta(milliseconds=50), b + timedelta(milliseconds=50)
    ours_at, theirs_at = (after, before) if winner_side == "after" else (before, after)
    report(store, theirs_at, response="r1", ours=False, input_tokens=90)
    report(store, ours_at, response="r1", ours=True, input_tokens=100)
    far_before, far_after = b - timedelta(days=400), b + timedelta(days=400)
    client = TestClient(create_app(ServerSettings(admin_key="k"), store))
    for merged in (False, True):
        if merged:
            optimize(store)
        left, right = counted(store, far_before, b), counted(store, b, far_after)
        assert len(left) + len(right) == 1, (merged, left, right)
        [row] = right if winner_side == "after" else left
        assert row["InputTokens"] == 100  # meterline's numbers, before and after merges
        assert usage(client, far_before, b)[0] + usage(client, b, far_after)[0] == 1
        assert usage(client, far_before, far_after) == (1, 100)
        # invoices of the months on either side bill the call once
        pricing = load_pricing(None, catalogue=Catalogue.bundled())
        months = {month(f"{t.year}-{t.month:02d}") for t in (before, after)}
        billed = [
            line.quantity
            for m in months
            for inv in compute_invoices(store, pricing, m, scope=Scope.ALL).values()
            for line in inv.lines
            if line.token_type == "input"
        ]
        assert billed == [100]


def test_a_pair_within_a_second_in_separate_parts(store: Store) -> None:
    """The issue's case: 11:59:59.95 / 12:00:00.05 within one month, two parts; each
    part's Timestamp range lies inside one of the two ranges."""
    noon = datetime(2026, 3, 10, 12, tzinfo=UTC)
    report(store, noon - timedelta(milliseconds=50), response="r1", ours=False)
    report(store, noon + timedelta(milliseconds=50), response="r1")
    _, [(parts,)] = store.query(
        "SELECT count() FROM system.parts WHERE database = {d:String} "
        "AND table = 'llm_usage' AND active",
        {"d": store.database},
    )
    assert parts == 2
    morning = counted(store, datetime(2026, 3, 10, tzinfo=UTC), noon)
    afternoon = counted(store, noon, datetime(2026, 3, 11, tzinfo=UTC))
    assert (len(morning), len(afternoon)) == (0, 1)


@pytest.mark.parametrize("order", ["later first", "earlier first"])
def test_equal_reports_the_earliest_wins_before_and_after_merges(store: Store, order: str) -> None:
    """Two reports that tie on scope and exactness: the earliest wins, whichever was
    inserted last, before and after OPTIMIZE FINAL."""
    b = datetime(2026, 5, 1, tzinfo=UTC)
    early = (b - timedelta(seconds=1), 70)
    late = (b + timedelta(seconds=1), 80)
    for at, tokens in (late, early) if order == "later first" else (early, late):
        report(store, at, response="r", ours=False, input_tokens=tokens)
    for merged in (False, True):
        if merged:
            optimize(store)
        assert [r["InputTokens"] for r in counted(store, b - timedelta(days=9), b)] == [70]
        assert counted(store, b, b + timedelta(days=9)) == []


def test_the_rank_scope_then_exactness_then_time(store: Store) -> None:
    b = datetime(2026, 6, 1, tzinfo=UTC)
    report(store, b - timedelta(hours=3), response="r", ours=False, input_tokens=1)
    report(store, b - timedelta(hours=2), response="r", ours=True, estimated=True, input_tokens=2)
    report(store, b + timedelta(hours=2), response="r", ours=True, input_tokens=3)
    report(store, b + timedelta(hours=3), response="r", ours=True, input_tokens=4)
    for merged in (False, True):
        if merged:
            optimize(store)
        assert counted(store, b - timedelta(days=1), b) == []
        [row] = counted(store, b, b + timedelta(days=1))
        assert row["InputTokens"] == 3  # exact meterline report, the earlier of two


def test_filters_apply_to_the_winning_report(store: Store) -> None:
    """A filter on the loser's feature does not count the response."""
    at = datetime(2026, 3, 5, tzinfo=UTC)
    report(store, at, response="r", ours=False, feature="search")
    report(store, at + timedelta(seconds=1), response="r", ours=True, feature="chat")
    span = (at - timedelta(days=1), at + timedelta(days=1))
    assert counted(store, *span, Feature="search") == []
    assert [r["Feature"] for r in counted(store, *span, Feature="chat")] == ["chat"]


def test_the_skew_limit_across_a_month_boundary(store: Store) -> None:
    """The documented limit: a winner more than SKEW past the month boundary that
    separates it from a losing report does not meet it (both count); a winner within
    SKEW of it meets every report of the other month, however far."""
    b = datetime(2026, 7, 1, tzinfo=UTC)
    wide = (b - timedelta(days=40), b + timedelta(days=40))
    report(store, b - timedelta(minutes=1), response="far", ours=False)
    report(store, b + SKEW + timedelta(minutes=1), response="far")
    report(store, b - SKEW - timedelta(hours=1), response="near", ours=False)
    report(store, b + timedelta(minutes=1), response="near")
    assert [r["ResponseId"] for r in counted(store, *wide)] == ["far", "far", "near"]


def test_a_report_near_a_boundary_is_stored_in_both_months(store: Store) -> None:
    b = datetime(2026, 8, 1, tzinfo=UTC)
    report(store, b + SKEW - timedelta(microseconds=1), response="near")
    report(store, b + SKEW, response="far")
    rows = store.query_dicts(
        "SELECT ResponseId, Month, Home FROM {db}.llm_usage ORDER BY ResponseId, Month"
    )
    assert [(r["ResponseId"], r["Month"], r["Home"]) for r in rows] == [
        ("far", 202608, 1),
        ("near", 202607, 0),
        ("near", 202608, 1),
    ]


# -- adjacent ranges add up to their union ----------------------------------------------

BASE = datetime(2026, 1, 31, 18, tzinfo=UTC)
"""Reports fall within 12 h of 2026-02-01 00:00 (a month boundary) or of other instants."""

_report = st.tuples(
    st.integers(0, 7),  # response
    st.integers(-12 * 3600 * 1000, 12 * 3600 * 1000),  # ms from BASE + 6 h
    st.booleans(),  # meterline's
    st.booleans(),  # estimated
)


def _winner(reports: list[tuple[int, int, bool, bool]]) -> int:
    """The documented rank, in Python: meterline's, exact, earliest (ms offset)."""
    return max(reports, key=lambda r: (r[2], not r[3], -r[1]))[1]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    reports=st.lists(_report, min_size=1, max_size=12),
    cuts=st.lists(st.integers(-13 * 3600, 13 * 3600), min_size=1, max_size=5, unique=True),
)
def test_adjacent_ranges_add_up_to_their_union(
    store: Store, reports: list[tuple[int, int, bool, bool]], cuts: list[int]
) -> None:
    store.command("TRUNCATE TABLE {db}.llm_usage")
    center = BASE + timedelta(hours=6)  # 2026-02-01 00:00
    for i, (response, offset, ours, estimated) in enumerate(reports):
        at = center + timedelta(milliseconds=offset)
        report(store, at, response=f"p{response}", ours=ours, estimated=estimated,
               input_tokens=i + 1)  # fmt: skip
    by_response: dict[int, list[tuple[int, int, bool, bool]]] = {}
    for r in reports:
        by_response.setdefault(r[0], []).append(r)
    edges = [center + timedelta(seconds=c) for c in sorted(cuts)]
    edges = [center - timedelta(days=2), *edges, center + timedelta(days=2)]
    for merged in (False, True):
        if merged:
            optimize(store)
        pieces = [counted(store, a, b) for a, b in itertools.pairwise(edges)]
        whole = counted(store, edges[0], edges[-1])
        assert sum(len(p) for p in pieces) == len(whole) == len(by_response)
        for (a, b), piece in zip(itertools.pairwise(edges), pieces, strict=True):
            expected = {
                f"p{k}"
                for k, rs in by_response.items()
                if a <= center + timedelta(milliseconds=_winner(rs)) < b
            }
            assert {r["ResponseId"] for r in piece} == expected


def test_without_the_read_settings_the_view_gives_the_same_rows(store: Store) -> None:
    """Grafana reads the view without the aggregator's settings."""
    b = datetime(2026, 9, 1, tzinfo=UTC)
    report(store, b - timedelta(minutes=5), response="a", ours=False)
    report(store, b + timedelta(minutes=5), response="a")
    report(store, b + timedelta(days=3), response="b")
    sql = (
        "SELECT ResponseId, Month FROM {db}.llm_usage_counted(start = {s:DateTime64(9, 'UTC')}, "
        "end = {e:DateTime64(9, 'UTC')}) ORDER BY ResponseId"
    )
    params = {"s": b - timedelta(days=60), "e": b + timedelta(days=60)}
    assert store.query(sql, params)[1] == store.query(sql, params, settings=READ_SETTINGS)[1]
    assert store.query(sql, params)[1] == [("a", 202609), ("b", 202609)]
