"""Every dashboard query runs on the real engine after Grafana's expansion.

Macros are expanded the way the ClickHouse plugin does: ``$__conditionalAll`` and
``${var:singlequote}`` in the frontend, ``$__timeFilter`` / ``$__timeInterval`` in the
plugin backend (``toDateTime(<unix seconds>)``, ``toStartOfInterval(toDateTime(col),
INTERVAL n second)``).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from meterline.store import Store

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
    sql = re.sub(r"\$__timeInterval\((\w+)\)",
                 lambda m: f"toStartOfInterval(toDateTime({m.group(1)}), INTERVAL 3600 second)", sql)  # fmt: skip
    assert "$" not in sql, sql
    return sql.replace("FROM llm_usage", "FROM {db}.llm_usage")


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
