"""clickhouse-connect's HTTP client against the endpoint, and the store's server backend
run end to end through the writable mode (the real engine behind real HTTP)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import pytest

from meterline.store.usage_schema import COUNTED_ALL
from tests.clickhouse_http.conftest import PASSWORD, Endpoint

if TYPE_CHECKING:
    from meterline.store import Store

clickhouse_connect = pytest.importorskip("clickhouse_connect")
from clickhouse_connect import common  # noqa: E402
from clickhouse_connect.driver.exceptions import DatabaseError, ProgrammingError  # noqa: E402


def client(ep: Endpoint, **kwargs: object):  # type: ignore[no-untyped-def]
    return clickhouse_connect.get_client(
        host=ep.host,
        port=ep.port,
        username="meterline",
        password=PASSWORD,
        database=ep.database,
        autogenerate_session_id=False,
        **kwargs,
    )


def test_connect_handshake(readonly: Endpoint) -> None:
    c = client(readonly)
    assert c.server_version and c.server_version[0].isdigit()
    assert c.protocol_version == 54405  # the Native probe saw BlockInfo: re-framing is on
    assert "enable_http_compression" in c.server_settings
    assert c.ping()


@pytest.mark.parametrize("compress", [True, False, "gzip", "zstd"])
def test_query_command_parameters(readonly: Endpoint, compress: object) -> None:
    c = client(readonly, compress=compress)
    result = c.query(
        "SELECT number AS n, toString(number) AS s, toLowCardinality('lc') AS l, "
        "map(toLowCardinality('k'), 'v') AS m FROM numbers(3)"
    )
    assert result.column_names == ("n", "s", "l", "m")
    assert result.result_rows == [(i, str(i), "lc", {"k": "v"}) for i in range(3)]
    server_side = c.query("SELECT {a:String}, {b:UInt8}", parameters={"a": "x\ty'z", "b": 7})
    assert server_side.result_rows == [("x\ty'z", 7)]
    client_side = c.query("SELECT %(a)s", parameters={"a": "it's"})
    assert client_side.result_rows == [("it's",)]
    assert c.command("SELECT 42") == 42
    assert c.command("SELECT 'a', 'b'") == ["a", "b"]
    assert c.command("SELECT 1 WHERE 0") == ""
    assert c.raw_query("SELECT 1 AS x", fmt="JSONEachRow") == b'{"x":1}\n'


def test_long_parameters_use_form_encoding(readonly: Endpoint) -> None:
    value = "p" * 6000  # over clickhouse-connect's URL limit: sent as multipart/form-data
    result = client(readonly).query("SELECT length({v:String})", parameters={"v": value})
    assert result.result_rows == [(6000,)]


def test_query_settings_and_errors(readonly: Endpoint) -> None:
    c = client(readonly)
    # readonly = 1: system.settings says every setting is read-only, as a read-only server
    # does, and clickhouse-connect refuses to send one by default...
    assert c.server_settings["max_threads"].readonly
    with pytest.raises(ProgrammingError, match="max_threads is readonly"):
        c.query("SELECT 1", settings={"max_threads": 2})
    # ...but the endpoint applies an allowed setting a client sends anyway
    common.set_setting("invalid_setting_action", "send")
    try:
        result = c.query("SELECT getSetting('max_threads')", settings={"max_threads": 2})
        assert result.result_rows == [(2,)]
        with pytest.raises(DatabaseError) as caught:
            c.query("SELECT 1", settings={"format_template_row": "/etc/passwd"})
        assert caught.value.code == 164
    finally:
        common.set_setting("invalid_setting_action", "error")
    with pytest.raises(DatabaseError) as caught:
        c.query("SELECT * FROM no_such_table")
    assert caught.value.code == 60
    assert caught.value.name == "UNKNOWN_TABLE"
    with pytest.raises(DatabaseError) as caught:
        c.command("DROP TABLE llm_usage")
    assert caught.value.code == 164
    with pytest.raises(DatabaseError) as caught:
        c.insert("otel_traces", [["x"]], column_names=["TraceId"])
    assert caught.value.code == 164


def test_wrong_password_is_authentication_failed(readonly: Endpoint) -> None:
    with pytest.raises(DatabaseError) as caught:
        clickhouse_connect.get_client(
            host=readonly.host, port=readonly.port, username="meterline", password="wrong"
        )
    assert caught.value.code == 516


def test_store_server_backend_end_to_end(writable: Endpoint, ch_store: Store) -> None:
    """open_store(clickhouse_url=...) → migrate → insert spans → llm_usage FINAL."""
    from meterline.store import open_store
    from meterline.store.migrations import MIGRATIONS

    database = f"viahttp_{uuid.uuid4().hex[:8]}"
    store = open_store(
        clickhouse_url=f"http://meterline:{PASSWORD}@{writable.host}:{writable.port}/{database}"
    )
    try:
        assert store.kind == "server"
        assert store.migrate() == [m.version for m in MIGRATIONS]
        assert store.migrate() == []  # idempotent

        at = datetime(2030, 1, 2, 3, 4, 5, 678000)
        usage = {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.response.id": "msg_1",
            "gen_ai.request.model": "claude-x",
            "gen_ai.usage.input_tokens": "1000",
            "gen_ai.usage.output_tokens": "250",
            "gen_ai.usage.cache_read.input_tokens": "400",
            "meterline.consumer.id": "acme",
        }
        columns = [
            "Timestamp",
            "TraceId",
            "SpanId",
            "SpanName",
            "ServiceName",
            "SpanAttributes",
            "Events.Timestamp",
            "Events.Name",
            "Events.Attributes",
        ]
        spans = [
            [at, "trace-1", "span-1", "chat claude-x", "app", usage, [at], ["ev"], [{"k": "v"}]],
            # the same response reported by a second instrumentation
            [at, "trace-1", "span-2", "chat claude-x", "app", usage, [], [], []],
            # not a usage span: filtered out by the view
            [at, "trace-1", "span-3", "GET /", "app", {"http.method": "GET"}, [], [], []],
        ]
        store.insert_columns(
            "otel_traces", [list(col) for col in zip(*spans, strict=True)], columns
        )
        store.insert_columns(
            "otel_traces", [list(col) for col in zip(*spans, strict=True)], columns
        )

        _, rows = store.query(
            "SELECT ConsumerId, Provider, ResponseModel, InputTokens, OutputTokens, "
            f"CacheReadInputTokens, Timestamp FROM {COUNTED_ALL}"
        )
        assert rows == [("acme", "anthropic", "claude-x", 1000, 250, 400, at)]
        assert store.query("SELECT count() FROM {db}.otel_traces")[1] == [(6,)]
        events = store.query("SELECT Events.Name FROM {db}.otel_traces WHERE SpanId = 'span-1'")
        assert events[1] == [(["ev"],), (["ev"],)]

        # the rows are in the engine, not in some HTTP-side copy
        direct = ch_store.query(
            f"SELECT sum(InputTokens) FROM {COUNTED_ALL.replace('{db}', f'`{database}`')}"
        )
        assert direct[1] == [(1000,)]
    finally:
        store.command("DROP DATABASE IF EXISTS {db}")
        store.close()


@pytest.mark.parametrize("fmt", ["Native", "RowBinary", "RowBinaryWithNamesAndTypes", "JSON"])
def test_raw_formats_are_the_engines(readonly: Endpoint, ch_store: Store, fmt: str) -> None:
    sql = "SELECT number AS n, toString(number) AS s FROM numbers(3)"
    raw = client(readonly).raw_query(sql, fmt=fmt)
    engine = ch_store.raw_query(f"{sql} FORMAT {fmt}")
    if fmt == "JSON":  # statistics (elapsed time) differ run to run
        import json

        assert json.loads(raw)["data"] == json.loads(engine)["data"]
    else:
        assert raw == engine


def test_metadata_and_streaming_reads(readonly: Endpoint) -> None:
    c = client(readonly)
    tables = c.query(
        "SELECT name FROM system.tables WHERE database = {db:String} ORDER BY name",
        parameters={"db": readonly.database},
    ).result_columns[0]
    assert {"otel_traces", "llm_usage"} <= set(tables)
    described = c.query("DESCRIBE TABLE llm_usage").result_rows
    assert any(row[0] == "ConsumerId" for row in described)
    assert c.command("EXISTS TABLE otel_traces") == 1
    with c.query_row_block_stream("SELECT number FROM numbers(100000)") as stream:
        assert sum(len(block) for block in stream) == 100000
