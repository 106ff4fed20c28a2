"""Every dashboard query runs on the real engine after Grafana's expansion.

Macros are expanded the way the ClickHouse plugin does: ``$__conditionalAll`` and
``${var:singlequote}`` in the frontend, ``$__fromTime`` / ``$__toTime`` /
``$__timeFilter`` / ``$__timeInterval`` in the plugin backend (``toDateTime(<unix
seconds>)``, ``toStartOfInterval(toDateTime(col), INTERVAL n second)``; its
pkg/macros/macros.go). The panels' numbers must equal the API's for the same range.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from meterline.aggregator.app import create_app
from meterline.settings import ServerSettings
from meterline.store import Store
from meterline.store.usage_schema import SCOPE

DASHBOARDS = sorted((Path(__file__).parents[2] / "dashboards").glob("*.json"))


def expand(sql: str, variables: dict[str, list[str] | None], start: int, end: int) -> str:
    def conditional_all(m: re.Match[str]) -> str:
        condition, var = m.group(1), m.group(2)
        return "1=1" if variables.get(var) is None else condition

    sql = re.sub(r"\$__conditionalAll\((.*?),\s*\$(\w+)\)", conditional_all, sql)
    sql = re.sub(
        r"\$\{(\w+):singlequote\}",
        lambda m: ",".join("'" + v.replace("'", "\\'") + "'" for v in variables[m.group(1)] or []),
        sql,
    )
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 lambda m: f"{m.group(1)} >= toDateTime({start}) AND {m.group(1)} <= toDateTime({end})",
                 sql)  # fmt: skip
    sql = sql.replace("$__fromTime", f"toDateTime({start})").replace(
        "$__toTime", f"toDateTime({end})"
    )
    sql = re.sub(r"\$__timeInterval\((\w+)\)",
                 lambda m: f"toStartOfInterval(toDateTime({m.group(1)}), INTERVAL 3600 second)", sql)  # fmt: skip
    assert "$" not in sql, sql
    return sql.replace("FROM llm_usage", "FROM {db}.llm_usage")  # also llm_usage_counted


def test_datasource_provisioning_uses_the_plugin_and_default_database() -> None:
    config = yaml.safe_load((DASHBOARDS[0].parent / "provisioning" / "datasource.yaml").read_text())
    [ds] = config["datasources"]
    assert ds["type"] == "grafana-clickhouse-datasource"
    assert ds["jsonData"]["defaultDatabase"] == "meterline" and "database" not in ds["jsonData"]
    for dashboard in DASHBOARDS:
        for panel in json.loads(dashboard.read_text())["panels"]:
            assert all(t["datasource"]["uid"] == ds["uid"] for t in panel["targets"])


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_query_runs(dashboard: Path, store: Store) -> None:
    now = time.time_ns()
    attrs = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
             "gen_ai.usage.input_tokens": "100", "gen_ai.usage.output_tokens": "10",
             "gen_ai.usage.cache_read.input_tokens": "40",
             "meterline.consumer.id": "acme", "meterline.feature": "chat"}  # fmt: skip
    store.insert_columns("otel_traces", [[now], ["a" * 32], ["b" * 16], [attrs]],
                         ["Timestamp", "TraceId", "SpanId", "SpanAttributes"])  # fmt: skip
    doc = json.loads(dashboard.read_text())
    for var in doc["templating"]["list"]:
        names, _ = store.query(var["query"].replace("FROM llm_usage", "FROM {db}.llm_usage"))
        assert len(names) == 1
    start, end = now // 10**9 - 3600, now // 10**9 + 60
    for selection in (
        {"consumer": None, "feature": None},
        {"consumer": ["acme"], "feature": ["chat"]},
    ):
        for panel in doc["panels"]:
            for target in panel["targets"]:
                names, rows = store.query(expand(target["rawSql"], selection, start, end))
                assert rows, (panel["title"], selection)
    none = {"consumer": ["nobody's"], "feature": None}
    table = next(p for p in doc["panels"] if p["title"] == "Usage by consumer and model")
    assert store.query(expand(table["targets"][0]["rawSql"], none, start, end))[1] == []
    names, rows = store.query(
        expand(table["targets"][0]["rawSql"], {"consumer": None, "feature": None}, start, end)
    )
    row = dict(zip(names, rows[0], strict=True))
    assert (row["consumer"], row["input"], row["cache_read"], row["output"]) == (
        "acme",
        100,
        40,
        10,
    )


def _span(store: Store, at: int, n: int, **attrs: str) -> None:
    base = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": "100", "gen_ai.usage.output_tokens": "10",
            "meterline.consumer.id": "acme", "meterline.feature": "chat"}  # fmt: skip
    scope = attrs.pop("scope", SCOPE)
    store.insert_columns(
        "otel_traces",
        [[at], [f"{n:032x}"], [f"{n:016x}"], [scope], [base | attrs]],
        ["Timestamp", "TraceId", "SpanId", "ScopeName", "SpanAttributes"],
    )


def test_panels_equal_the_api(store: Store) -> None:
    """Duplicates across a month boundary, an invalid count, a failed call: every
    panel's totals over the dashboard's range equal /v1/usage's over the same range."""
    boundary = 1_775_001_600  # 2026-04-01T00:00:00Z
    ns = 10**9
    _span(store, boundary * ns - 50_000_000, 1, **{"gen_ai.response.id": "r1",
          "scope": "openai.sdk", "gen_ai.usage.input_tokens": "90"})  # fmt: skip
    _span(store, boundary * ns + 50_000_000, 2, **{"gen_ai.response.id": "r1"})
    _span(store, (boundary - 600) * ns, 3, **{"gen_ai.usage.input_tokens": "-5"})
    _span(store, (boundary + 600) * ns, 4, **{"error.type": "500", "meterline.feature": "search",
          "http.response.status_code": "500", "meterline.consumer.id": "beta"})  # fmt: skip
    _span(store, (boundary + 900) * ns, 5, **{"gen_ai.usage.cache_read.input_tokens": "30"})
    doc = json.loads(DASHBOARDS[0].read_text())
    panels = {p["title"]: p["targets"][0]["rawSql"] for p in doc["panels"]}
    everyone = {"consumer": None, "feature": None}
    client = TestClient(create_app(ServerSettings(admin_key="k"), store))
    for start, end in ((boundary - 3600, boundary), (boundary, boundary + 3600),
                       (boundary - 3600, boundary + 3600)):  # fmt: skip
        window = {"from": datetime.fromtimestamp(start, UTC).isoformat(),
                  "to": datetime.fromtimestamp(end, UTC).isoformat()}  # fmt: skip
        api = client.get("/v1/usage", params={**window, "group_by": "consumer,model"},
                         headers={"authorization": "Bearer k"}).json()["rows"]  # fmt: skip
        names, rows = store.query(expand(panels["Usage by consumer and model"], everyone,
                                         start, end))  # fmt: skip
        table = sorted(
            (r["consumer"], r["model"], r["requests"], r["failed"], r["invalid"], r["input"],
             r["cache_read"], r["output"])
            for r in (dict(zip(names, row, strict=True)) for row in rows)
        )  # fmt: skip
        assert table == sorted(
            (r["consumer"], r["model"], r["requests"], r["failed_requests"],
             r["invalid_requests"], r["input_tokens"], r["cache_read_input_tokens"],
             r["output_tokens"])
            for r in api
        )  # fmt: skip
        names, [stat] = store.query(
            expand(panels["Requests / failed / invalid / unattributed"], everyone, start, end)
        )
        stat = dict(zip(names, stat, strict=True))
        assert (stat["requests"], stat["failed"], stat["invalid"]) == (
            sum(r["requests"] for r in api),
            sum(r["failed_requests"] for r in api),
            sum(r["invalid_requests"] for r in api),
        )
    # the pair counts once, after the boundary, with meterline's numbers
    assert stat["requests"] == 4 and stat["invalid"] == 1 and stat["failed"] == 1
