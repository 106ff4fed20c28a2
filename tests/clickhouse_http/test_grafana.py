"""What Grafana's ClickHouse plugin sends over HTTP still answers on the read-only endpoint.

The plugin (clickhouse-go v2, protocol "http") POSTs the SQL with ``database``,
``default_format=Native`` and ``client_protocol_version``; its query editor reads
metadata with ``SHOW DATABASES``, ``SHOW TABLES FROM "db"``, ``DESC TABLE "db"."t"``,
``system.functions`` and ``system.columns`` (``src/data/CHDatasource.ts``). Every panel of the dashboards
runs with its macros expanded as the plugin expands them (tests/dashboards/grafana_expand.py)
and answers the same rows as the store.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from meterline.aggregator.grafana import DASHBOARD_UIDS, build_dashboards
from tests.clickhouse_http.conftest import Endpoint
from tests.clickhouse_http.test_endpoint import grafana_post, post
from tests.dashboards.grafana_expand import QueryContext, Variables, expand

if TYPE_CHECKING:
    from meterline.store import Store


def _metadata_queries(db: str) -> list[str]:
    return [
        "SHOW DATABASES",
        f'SHOW TABLES FROM "{db}"',
        "SHOW TABLES",
        f'DESC TABLE "{db}"."otel_traces"',
        'DESC TABLE "llm_usage"',
        "SELECT name, is_aggregate, case_insensitive, alias_to, origin, description, syntax, "
        "arguments, returned_value, examples, categories FROM system.functions LIMIT 10000",
        "SELECT name, type, table FROM system.columns",
        f"SELECT name, type, table FROM system.columns WHERE database = '{db}' "
        "AND table = 'llm_usage'",
        f"SELECT name, type, table FROM system.columns WHERE database IN ('{db}')",
        "SELECT displayName(), version(), revision(), timezone()",
    ]


def test_plugin_metadata_queries_answer(readonly: Endpoint) -> None:
    for sql in _metadata_queries(readonly.database):
        response = grafana_post(readonly, sql)
        assert response.status_code == 200, (sql, response.text)
        assert response.headers["X-ClickHouse-Format"] == "Native"
        assert response.content, sql


def test_plugin_describe_names_the_columns(readonly: Endpoint) -> None:
    response = post(
        readonly, f'DESC TABLE "{readonly.database}"."llm_usage"', params={"default_format": "JSON"}
    )
    assert response.status_code == 200, response.text
    names = [row["name"] for row in json.loads(response.content)["data"]]
    assert {"Timestamp", "ConsumerId", "InputTokens"} <= set(names)


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_every_dashboard_query_answers_like_the_store(
    readonly: Endpoint, ch_store: Store, uid: str
) -> None:
    """Each panel's SQL as the plugin sends it (Native) and as JSON answers the rows the
    store answers (the panels' numbers: tests/dashboards)."""
    now = time.time_ns()
    attrs = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
             "gen_ai.usage.input_tokens": "100", "gen_ai.usage.output_tokens": "10",
             "meterline.consumer.id": "grafana-acme", "meterline.feature": "chat"}  # fmt: skip
    ch_store.insert_columns("otel_traces", [[now], ["c" * 32], ["d" * 16], [attrs]],
                            ["Timestamp", "TraceId", "SpanId", "SpanAttributes"])  # fmt: skip
    [doc] = [d for d in build_dashboards(database=readonly.database) if d["uid"] == uid]
    at = datetime.fromtimestamp(now / 1e9, UTC)
    ctx = QueryContext(at - timedelta(hours=1), at + timedelta(minutes=1), interval_s=60)
    variables = Variables(current={"database": readonly.database}, options={})
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            variables.options[var["name"]] = ["grafana-acme"]
            variables.current[var["name"]] = "grafana-acme" if not var["multi"] else ["$__all"]
    queries = [expand(t["rawSql"], variables, ctx) for p in doc["panels"] for t in p["targets"]]
    for sql in queries:
        native = grafana_post(readonly, sql)
        assert native.status_code == 200, (sql, native.text)
        as_json = post(readonly, sql, params={"default_format": "JSONCompact"})
        assert as_json.status_code == 200, (sql, as_json.text)
        _, rows = ch_store.query(sql)
        assert len(json.loads(as_json.content)["data"]) == len(rows), sql
