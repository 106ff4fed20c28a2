"""The production Collector config writes where meterline reads, and keeps what the view keeps.

The filter is checked two ways: its attribute keys are the ones the view's WHERE reads, and
a small evaluator for the config's (deliberately plain) OTTL conditions agrees with the
real materialized view, on the engine, span by span.
"""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from meterline.store import migrations

if TYPE_CHECKING:
    from meterline.store import Store

CONFIG = Path(__file__).resolve().parents[2] / "collector" / "otelcol" / "config.yaml"
DATABASE = "meterline"  # the store's default database (open_store, `meterline migrate`)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def _exporter(config: dict[str, Any]) -> dict[str, Any]:
    return config["exporters"]["clickhouse"]


def _filter_conditions(config: dict[str, Any]) -> list[str]:
    return [
        " ".join(c.split()) for c in config["processors"]["filter/genai_usage"]["traces"]["span"]
    ]


def _where_clause() -> str:
    return migrations.USAGE_MV_DDL.split("\nWHERE", 1)[1]


def test_exports_into_the_migrated_table(config: dict[str, Any]) -> None:
    exporter = _exporter(config)
    assert exporter["database"] == DATABASE
    assert exporter["traces_table_name"] == migrations.TRACES_TABLE
    assert f"{{db}}.{migrations.TRACES_TABLE}" in migrations.TRACES_DDL
    assert f"FROM {{db}}.{migrations.TRACES_TABLE}" in migrations.USAGE_MV_DDL
    assert exporter["create_schema"] is False
    assert exporter["async_insert"] is False


def test_pipeline_and_persistent_queue(config: dict[str, Any]) -> None:
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert pipeline["processors"][0] == "memory_limiter"
    assert pipeline["processors"] == ["memory_limiter", "filter/genai_usage", "batch"]
    assert pipeline["exporters"] == ["clickhouse"]
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")

    exporter = _exporter(config)
    assert exporter["retry_on_failure"]["enabled"] is True
    queue = exporter["sending_queue"]
    assert queue["enabled"] is True
    storage = queue["storage"]
    assert storage.split("/")[0] == "file_storage"
    assert storage in config["extensions"]
    assert storage in config["service"]["extensions"]
    assert config["extensions"][storage]["directory"]


def test_every_otlp_receiver_requires_the_bearer_token(config: dict[str, Any]) -> None:
    """Anyone who reaches an open OTLP port can write usage for any consumer: every
    receiver protocol authenticates with a declared, started ``bearertokenauth``
    extension whose token comes from the environment (empty: the Collector will not start)."""
    extensions = config["extensions"]
    started = config["service"]["extensions"]
    receivers = config["receivers"]
    used = {r for p in config["service"]["pipelines"].values() for r in p["receivers"]}
    assert used <= set(receivers)
    checked = 0
    for name in used:
        protocols = receivers[name]["protocols"]
        assert set(protocols) == {"grpc", "http"}
        for protocol, server in protocols.items():
            authenticator = (server or {}).get("auth", {}).get("authenticator")
            assert authenticator, f"receiver {name} {protocol} is open"
            assert authenticator.split("/")[0] == "bearertokenauth"
            assert authenticator in extensions and authenticator in started
            auth = extensions[authenticator]
            assert auth["token"] == "${env:METERLINE_INGEST_TOKEN}"
            assert auth.get("scheme", "Bearer") == "Bearer"
            assert not {"filename", "tokens"} & set(auth)  # one source of the token
            checked += 1
    assert checked == 2
    guide = (CONFIG.parent / "README.md").read_text()
    assert "bearertokenauth" in guide and "METERLINE_INGEST_TOKEN" in guide


def test_filter_reads_the_keys_the_view_reads(config: dict[str, Any]) -> None:
    where = _where_clause()
    view_keys = set(re.findall(r"SpanAttributes(?:, |\[)'([^']+)'", where))
    filter_keys = set(re.findall(r'attributes\["([^"]+)"\]', " ".join(_filter_conditions(config))))
    assert view_keys == filter_keys
    dropped_ops = set(
        re.findall(r'"gen_ai.operation.name"\] == "([^"]+)"', " ".join(_filter_conditions(config)))
    )
    assert dropped_ops == set(migrations.AGGREGATE_OPERATIONS)
    assert "STATUS_CODE_ERROR" in where


_ATOM = re.compile(
    r'^(?:attributes\["(?P<key>[^"]+)"\] (?P<op>==|!=) (?P<value>nil|true|"[^"]*")'
    r"|status\.code (?P<sop>==|!=) (?P<status>STATUS_CODE_\w+))$"
)


def _dropped(conditions: list[str], attributes: dict[str, str], status: str) -> bool:
    """Evaluate the config's conditions (conjunctions of simple comparisons only)."""

    def atom(text: str) -> bool:
        match = _ATOM.match(text)
        assert match, f"condition atom outside the tested subset of OTTL: {text!r}"
        if match["status"]:
            return (status == match["status"]) == (match["sop"] == "==")
        value = attributes.get(match["key"])
        raw = match["value"]
        # A bool attribute is stored as the string "true" (the exporter's AsString).
        expected = None if raw == "nil" else "true" if raw == "true" else raw[1:-1]
        return (value == expected) == (match["op"] == "==")

    return any(all(atom(a) for a in c.split(" and ")) for c in conditions)


def test_filter_agrees_with_the_view_span_by_span(config: dict[str, Any], store: Store) -> None:
    conditions = _filter_conditions(config)
    options: dict[str, list[str | None]] = {
        "gen_ai.usage.input_tokens": [None, "10"],
        "gen_ai.usage.completion_tokens": [None, "3"],
        "gen_ai.provider.name": [None, "openai"],
        "gen_ai.system": [None, "anthropic"],
        "error.type": [None, "timeout"],
        "gen_ai.operation.name": [None, "chat", "invoke_agent", "execute_tool"],
        "meterline.superseded": [None, "true"],
    }
    statuses = ["STATUS_CODE_UNSET", "STATUS_CODE_ERROR"]
    spans = []
    for n, (status, values) in enumerate(
        itertools.product(statuses, itertools.product(*options.values()))
    ):
        attributes = {k: v for k, v in zip(options, values, strict=True) if v is not None}
        spans.append((f"span-{n}", status, attributes))
    at = datetime(2030, 6, 1, 12, 0)
    columns = ["Timestamp", "TraceId", "SpanId", "SpanName", "StatusCode", "SpanAttributes"]
    data = [
        [at] * len(spans),
        ["trace"] * len(spans),
        [s[0] for s in spans],
        ["span"] * len(spans),
        [s[1] for s in spans],
        [s[2] for s in spans],
    ]
    store.insert_columns("otel_traces", data, columns)
    _, rows = store.query("SELECT SpanId FROM {db}.llm_usage")
    kept_by_view = {r[0] for r in rows}
    kept_by_filter = {
        span_id for span_id, status, attrs in spans if not _dropped(conditions, attrs, status)
    }
    assert kept_by_filter == kept_by_view
    assert 0 < len(kept_by_view) < len(spans)
