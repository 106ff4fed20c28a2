"""The schema: the exporter's table exactly, and the view's extraction rules."""

from __future__ import annotations

import time

import pytest

from meterline.collector.decode import COLUMNS
from meterline.store import Store, open_store
from meterline.store.migrations import MIGRATIONS

# The otelcol-contrib clickhouse exporter's default traces table (its traces_table.sql).
EXPORTER_COLUMNS = [
    ("Timestamp", "DateTime64(9)"),
    ("TraceId", "String"),
    ("SpanId", "String"),
    ("ParentSpanId", "String"),
    ("TraceState", "String"),
    ("SpanName", "LowCardinality(String)"),
    ("SpanKind", "LowCardinality(String)"),
    ("ServiceName", "LowCardinality(String)"),
    ("ResourceAttributes", "Map(LowCardinality(String), String)"),
    ("ScopeName", "String"),
    ("ScopeVersion", "String"),
    ("SpanAttributes", "Map(LowCardinality(String), String)"),
    ("Duration", "UInt64"),
    ("StatusCode", "LowCardinality(String)"),
    ("StatusMessage", "String"),
    ("Events.Timestamp", "Array(DateTime64(9))"),
    ("Events.Name", "Array(LowCardinality(String))"),
    ("Events.Attributes", "Array(Map(LowCardinality(String), String))"),
    ("Links.TraceId", "Array(String)"),
    ("Links.SpanId", "Array(String)"),
    ("Links.TraceState", "Array(String)"),
    ("Links.Attributes", "Array(Map(LowCardinality(String), String))"),
]


def test_otel_traces_matches_the_exporter_schema(store: Store) -> None:
    _, rows = store.query(
        "SELECT name, type FROM system.columns WHERE database = {d:String} "
        "AND table = 'otel_traces' ORDER BY position",
        {"d": store.database},
    )
    assert rows == EXPORTER_COLUMNS
    assert [name for name, _ in EXPORTER_COLUMNS] == list(COLUMNS)
    _, [(sorting, partition, engine)] = store.query(
        "SELECT sorting_key, partition_key, engine FROM system.tables "
        "WHERE database = {d:String} AND name = 'otel_traces'",
        {"d": store.database},
    )
    assert engine == "MergeTree"
    assert partition == "toDate(Timestamp)"
    assert sorting == "ServiceName, SpanName, toDateTime(Timestamp), Timestamp"


def test_migrations_are_idempotent(store: Store) -> None:
    assert store.migrate() == []
    _, [(n,)] = store.query("SELECT count() FROM {db}.schema_migrations FINAL")
    assert n == len(MIGRATIONS)


def _insert(store: Store, spans: list[dict]) -> None:
    now = time.time_ns()
    defaults = {
        "Timestamp": now, "TraceId": "t" * 32, "SpanId": "s" * 16, "ParentSpanId": "",
        "TraceState": "", "SpanName": "chat", "SpanKind": "SPAN_KIND_CLIENT",
        "ServiceName": "svc", "ResourceAttributes": {}, "ScopeName": "", "ScopeVersion": "",
        "SpanAttributes": {}, "Duration": 1, "StatusCode": "STATUS_CODE_UNSET",
        "StatusMessage": "",
    }  # fmt: skip
    rows = [{**defaults, **span} for span in spans]
    names = list(defaults)
    store.insert_columns("otel_traces", [[r[n] for r in rows] for n in names], names)


COUNTED_ALL = "{db}.llm_usage_counted(start = '1900-01-01 00:00:00', end = '2262-04-11 00:00:00')"


def _usage(store: Store) -> list[dict]:
    return store.query_dicts(f"SELECT * FROM {COUNTED_ALL} ORDER BY SpanId")


def test_view_extracts_normalised_usage(store: Store) -> None:
    _insert(store, [
        {"SpanId": "a", "ResourceAttributes": {"meterline.consumer.id": "from-resource",
                                                "meterline.feature": "f-res"},
         "SpanAttributes": {"gen_ai.system": "anthropic", "gen_ai.request.model": "claude",
                            "gen_ai.usage.prompt_tokens": "30",
                            "gen_ai.usage.completion_tokens": "3",
                            "meterline.feature": "f-span",
                            "gen_ai.usage.cache_creation.input_tokens": "20",
                            "meterline.usage.cache_creation_1h.input_tokens": "5",
                            "meterline.request.stream": "true",
                            "meterline.usage.estimated": "true"}},
        {"SpanId": "b", "StatusCode": "STATUS_CODE_ERROR",
         "SpanAttributes": {"gen_ai.provider.name": "openai", "error.type": "500",
                            "http.response.status_code": "500"}},
        {"SpanId": "c", "SpanAttributes": {"gen_ai.provider.name": "openai",
                                           "gen_ai.usage.input_tokens": "9",
                                           "http.response.status_code": "429"}},
        {"SpanId": "d", "SpanAttributes": {"gen_ai.provider.name": "openai",
                                           "gen_ai.operation.name": "invoke_agent",
                                           "gen_ai.usage.input_tokens": "999"}},
        {"SpanId": "e", "SpanAttributes": {"http.request.method": "GET"}},
    ])  # fmt: skip
    rows = _usage(store)
    assert [r["SpanId"] for r in rows] == ["a", "b", "c"]  # agent and plain spans not counted
    a, b, c = rows
    assert (a["ConsumerId"], a["Feature"], a["Provider"]) == (
        "from-resource",
        "f-span",
        "anthropic",
    )
    assert (a["InputTokens"], a["OutputTokens"], a["CacheCreationInputTokens"]) == (30, 3, 20)
    assert (a["CacheCreation1hInputTokens"], a["Streamed"], a["Estimated"]) == (5, 1, 1)
    assert a["ResponseModel"] == "claude" and a["Billable"] == 1
    assert (b["Billable"], b["ErrorType"], b["HttpStatus"]) == (0, "500", 500)
    assert c["Billable"] == 0  # an HTTP error status alone makes a call non-billable


def test_an_empty_attribute_counts_as_not_set(store: Store) -> None:
    _insert(store, [
        {"SpanId": "a", "ResourceAttributes": {"meterline.consumer.id": "from-resource"},
         "SpanAttributes": {"gen_ai.provider.name": "openai", "meterline.consumer.id": "",
                            "gen_ai.usage.input_tokens": "", "gen_ai.usage.prompt_tokens": "7",
                            "gen_ai.request.model": "m", "gen_ai.response.model": ""}},
    ])  # fmt: skip
    [row] = _usage(store)
    assert (row["ConsumerId"], row["InputTokens"], row["ResponseModel"]) == (
        "from-resource",
        7,
        "m",
    )


def test_a_database_of_migrations_1_to_3_upgrades_with_its_data(engine_dir) -> None:
    """Migration 4 rebuilds llm_usage (new keys and Version type) from the old rows: a
    pair across a month boundary counted twice before counts once after; the old rank
    (meterline's span) still decides; a too-large count is flagged; the view is new."""
    from datetime import UTC, datetime

    from meterline.store import open_store
    from meterline.store.migrations import SCOPE

    old = open_store(data_dir=engine_dir, database="upgrade_" + str(time.time_ns()))
    try:
        assert old.migrate(upto=3) == [1, 2, 3]
        b = int(datetime(2026, 4, 1, tzinfo=UTC).timestamp()) * 10**9
        attrs = {"gen_ai.provider.name": "openai", "gen_ai.response.id": "r1",
                 "meterline.consumer.id": "x", "gen_ai.usage.output_tokens": "1"}  # fmt: skip
        _insert(old, [{"SpanId": "a", "Timestamp": b - 10**8, "ScopeName": "sdk",
                       "SpanAttributes": {**attrs, "gen_ai.usage.input_tokens": "90"}}])  # fmt: skip
        _insert(old, [{"SpanId": "b", "Timestamp": b + 10**8, "ScopeName": SCOPE,
                       "SpanAttributes": {**attrs, "gen_ai.usage.input_tokens": "100"}}])  # fmt: skip
        _insert(old, [{"SpanId": "c", "Timestamp": b + 10**12, "SpanAttributes": {
            **attrs, "gen_ai.response.id": "r2", "gen_ai.usage.input_tokens": str(2**63)}}])  # fmt: skip
        _, [(before,)] = old.query(  # as the reads of that release did
            "SELECT count() FROM {db}.llm_usage FINAL",
            settings={"do_not_merge_across_partitions_select_final": 1},
        )
        assert before == 3  # the pair across the boundary: counted in both months
        assert old.migrate() == [m.version for m in MIGRATIONS if m.version > 3]
        rows = _usage(old)
        assert [(r["SpanId"], r["InputTokens"], r["UsageError"]) for r in rows] == [
            ("b", 100, ""),
            ("c", 0, "gen_ai.usage.input_tokens: above 1000000000"),  # flagged, not kept
        ]
        assert old.migrate() == []
        _, [(tables,)] = old.query(
            "SELECT groupArray(name) FROM system.tables WHERE database = {d:String}",
            {"d": old.database},
        )
        assert "llm_usage_next" not in tables and "llm_usage_counted" in tables
        _insert(old, [{"SpanId": "d", "SpanAttributes": {
            "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": "abc"}}])  # fmt: skip
        [new] = [r for r in _usage(old) if r["SpanId"] == "d"]
        assert new["UsageError"] == "gen_ai.usage.input_tokens: not a non-negative integer"
    finally:
        old.command("DROP DATABASE IF EXISTS {db}")


def test_the_embedded_ingest_tables_merge_wider(store: Store) -> None:
    for table in ("otel_traces", "llm_usage"):
        _, [(ddl,)] = store.query(
            "SELECT create_table_query FROM system.tables "
            "WHERE database = {d:String} AND name = {t:String}",
            {"d": store.database, "t": table},
        )
        assert "merge_selector_base = 20" in ddl, table


def test_an_insert_part_of_spans_is_compact(store: Store) -> None:
    """~15k spans (the writer's typical insert, ~10 MiB) in one file, not ~130."""
    attrs = {f"gen_ai.attribute.{i}": "x" * 40 for i in range(14)}
    _insert(store, [{"SpanId": f"{i:016x}", "SpanAttributes": attrs} for i in range(15_000)])
    _, parts = store.query(
        "SELECT part_type, data_uncompressed_bytes FROM system.parts "
        "WHERE database = {d:String} AND table = 'otel_traces' AND active",
        {"d": store.database},
    )
    [(part_type, size)] = parts
    assert size > 10_485_760  # above ClickHouse's default threshold for the Wide format
    assert part_type == "Compact"


def test_dedup_prefers_exact_over_estimated(store: Store) -> None:
    attrs = {"gen_ai.provider.name": "openai", "gen_ai.response.id": "r1",
             "meterline.consumer.id": "x"}  # fmt: skip
    _insert(store, [
        {"SpanId": "a", "SpanAttributes": {**attrs, "gen_ai.usage.input_tokens": "100"}},
        {"SpanId": "b", "SpanAttributes": {**attrs, "gen_ai.usage.input_tokens": "90",
                                           "meterline.usage.estimated": "true"}},
    ])  # fmt: skip
    late = {**attrs, "gen_ai.usage.input_tokens": "80", "meterline.usage.estimated": "true"}
    _insert(store, [{"SpanId": "c", "SpanAttributes": late}])
    [row] = _usage(store)
    assert (row["InputTokens"], row["DedupKey"]) == (100, "openai/r1")


def test_open_store_rejects_ambiguous_locations(tmp_path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        open_store()
    with pytest.raises(ValueError, match="exactly one"):
        open_store(data_dir=tmp_path, clickhouse_url="http://h:8123")
    with pytest.raises(ValueError, match="scheme"):
        open_store(clickhouse_url="ftp://host/db")


def test_sdk_span_of_the_same_response_yields_to_meterlines(store: Store) -> None:
    """The anthropic SDK's own span: same response id, `cache_write` naming, and a
    whole-call span that meterline marks superseded — counted once, meterline's numbers."""
    sdk = {"gen_ai.provider.name": "anthropic", "gen_ai.response.id": "msg_1",
           "gen_ai.usage.input_tokens": "100", "gen_ai.usage.cache_write.input_tokens": "0",
           "meterline.consumer.id": "x"}  # fmt: skip
    ours = {**sdk, "gen_ai.usage.cache_write.input_tokens": "60", "gen_ai.usage.output_tokens": "5"}
    enclosing_failure = {"gen_ai.provider.name": "anthropic", "error.type": "rate_limit_error",
                         "meterline.consumer.id": "x", "meterline.superseded": "true"}  # fmt: skip
    _insert(store, [
        {"SpanId": "a", "ScopeName": "meterline.instrumentation", "SpanAttributes": ours},
        {"SpanId": "b", "ScopeName": "com.anthropic.sdk.python", "SpanAttributes": sdk},
        {"SpanId": "c", "StatusCode": "STATUS_CODE_ERROR", "SpanAttributes": enclosing_failure},
    ])  # fmt: skip
    [row] = _usage(store)
    assert (row["SpanId"], row["CacheCreationInputTokens"], row["OutputTokens"]) == ("a", 60, 5)
