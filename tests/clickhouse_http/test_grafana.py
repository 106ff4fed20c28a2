"""What Grafana's ClickHouse plugin sends over HTTP still answers on the read-only endpoint.

The plugin (clickhouse-go v2, protocol "http") POSTs the SQL with ``database``,
``default_format=Native`` and ``client_protocol_version``; its query editor reads
metadata with ``SHOW DATABASES``, ``SHOW TABLES FROM "db"``, ``DESC TABLE "db"."t"``,
``system.functions`` and ``system.columns`` (``src/data/CHDatasource.ts``). Every panel
and variable of ``dashboards/*.json`` runs with its macros expanded the way
tests/dashboards does, and answers the same rows as the store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.clickhouse_http.conftest import Endpoint
from tests.clickhouse_http.test_endpoint import grafana_post, post
from tests.dashboards.test_dashboards import DASHBOARDS, expand

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


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_answers_like_the_store(
    readonly: Endpoint, ch_store: Store, dashboard: Path
) -> None:
    now = time.time_ns()
    attrs = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
             "gen_ai.usage.input_tokens": "100", "gen_ai.usage.output_tokens": "10",
             "meterline.consumer.id": "grafana-acme", "meterline.feature": "chat"}  # fmt: skip
    ch_store.insert_columns("otel_traces", [[now], ["c" * 32], ["d" * 16], [attrs]],
                            ["Timestamp", "TraceId", "SpanId", "SpanAttributes"])  # fmt: skip
    doc = json.loads(dashboard.read_text())
    start, end = now // 10**9 - 3600, now // 10**9 + 60
    queries = [var["query"] for var in doc["templating"]["list"]]
    for selection in ({"consumer": None, "feature": None},
                      {"consumer": ["grafana-acme"], "feature": ["chat"]}):  # fmt: skip
        for panel in doc["panels"]:
            queries += [expand(t["rawSql"], selection, start, end) for t in panel["targets"]]
    for sql in queries:
        sql_here = sql.replace("{db}.", "")  # the endpoint's default database is the store's
        native = grafana_post(readonly, sql_here)
        assert native.status_code == 200, (sql_here, native.text)
        as_json = post(readonly, sql_here, params={"default_format": "JSONCompact"})
        assert as_json.status_code == 200, (sql_here, as_json.text)
        _, rows = ch_store.query(sql.replace("FROM llm_usage", "FROM {db}.llm_usage"))
        assert len(json.loads(as_json.content)["data"]) == len(rows), sql_here
        assert rows, sql_here
