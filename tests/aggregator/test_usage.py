"""/v1/usage: the SQL as a string, and the route over a real engine."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from meterline.aggregator.app import create_app
from meterline.aggregator.queries.usage import UsageFilter, usage_sql
from meterline.aggregator.tenancy import Scope
from meterline.settings import ServerSettings
from meterline.store import Store
from meterline.store.usage_schema import COUNTED_SELECT


def test_sql_binds_every_value_and_reads_final() -> None:
    sql, params = usage_sql(
        UsageFilter(start=datetime(2026, 1, 1, tzinfo=UTC), consumer="x'; DROP TABLE t; --", scope=Scope.ALL,
                    model="gpt-4o", group_by=("consumer", "hour"))
    )  # fmt: skip
    assert f"FROM (\n{COUNTED_SELECT}\n)" in sql
    assert "sumIf(toUInt128(InputTokens), UsageError = '') AS `input_tokens`" in sql
    assert "DROP" not in sql and "gpt-4o" not in sql
    assert "ConsumerId = {consumer:String}" in sql
    assert "(ResponseModel = {model:String} OR RequestModel = {model:String})" in sql
    assert "GROUP BY `consumer`, `hour`" in sql
    assert params["consumer"] == "x'; DROP TABLE t; --"
    with pytest.raises(ValueError, match="unknown group_by 'colour'"):
        usage_sql(UsageFilter(group_by=("colour",), scope=Scope.ALL))


def _insert(store: Store, consumer: str, model: str, tokens: int, ts: int) -> None:
    attrs = {"gen_ai.provider.name": "openai", "gen_ai.request.model": model,
             "gen_ai.usage.input_tokens": str(tokens), "meterline.consumer.id": consumer}  # fmt: skip
    names = ["Timestamp", "TraceId", "SpanId", "SpanAttributes", "StatusCode"]
    store.insert_columns(
        "otel_traces",
        [[ts], [f"{ts:032x}"], [f"{tokens:016x}"], [attrs], ["STATUS_CODE_UNSET"]],
        names,
    )


def test_route_filters_groups_and_guards(store: Store) -> None:
    day = 86_400 * 10**9
    t0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp()) * 10**9
    _insert(store, "acme", "gpt-4o", 10, t0)
    _insert(store, "acme", "gpt-4o-mini", 20, t0 + day)
    _insert(store, "beta", "gpt-4o", 40, t0 + 2 * day)
    client = TestClient(create_app(ServerSettings(admin_key="k"), store))
    auth = {"authorization": "Bearer k"}
    assert client.get("/v1/usage").status_code == 401
    rows = client.get("/v1/usage", params={"group_by": "consumer,day"}, headers=auth).json()["rows"]
    assert [(r["consumer"], r["day"], r["input_tokens"]) for r in rows] == [
        ("acme", "2026-03-01T00:00:00Z", 10), ("acme", "2026-03-02T00:00:00Z", 20),
        ("beta", "2026-03-03T00:00:00Z", 40)]  # fmt: skip
    window = {"from": "2026-03-02T00:00:00Z", "to": "2026-03-03T00:00:00"}
    [row] = client.get("/v1/usage", params=window, headers=auth).json()["rows"]
    assert row["input_tokens"] == 20  # `to` is exclusive, naive times are UTC
    [row] = client.get("/v1/usage", params={"model": "gpt-4o"}, headers=auth).json()["rows"]
    assert (row["requests"], row["input_tokens"]) == (2, 50)
    assert client.get("/v1/usage", params={"consumer": "nobody"}, headers=auth).json() == {
        "rows": []
    }
    bad = client.get("/v1/usage", params={"group_by": "consumer,colour"}, headers=auth)
    assert bad.status_code == 422 and "colour" in str(bad.json())
    assert client.get("/healthz").status_code == 200
