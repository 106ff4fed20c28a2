"""ClickHouse's HTTP interface, request by request, against the real engine."""

from __future__ import annotations

import calendar
import gzip
import json
import re
import struct
import zlib
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import lz4.frame
import pytest

from tests.clickhouse_http.conftest import PASSWORD, Endpoint

if TYPE_CHECKING:
    from meterline.store import Store

AUTH = ("meterline", PASSWORD)
ERROR_BODY = re.compile(
    r"^Code: (\d+)\. DB::Exception: .+ \(([A-Z_]+)\) \(version [\d.]+\)\n$", re.S
)
SQL = "SELECT toUInt8(number) AS n, toString(number) AS s FROM numbers(2)"


def post(ep: Endpoint, body: Any = b"", **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("auth", AUTH)
    return httpx.post(ep.url + "/", content=body, timeout=30, **kwargs)


def get(ep: Endpoint, path: str = "/", **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("auth", AUTH)
    return httpx.get(ep.url + path, timeout=30, **kwargs)


def assert_error(response: httpx.Response, code: int, name: str, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["X-ClickHouse-Exception-Code"] == str(code)
    match = ERROR_BODY.match(response.text)
    assert match, response.text
    assert match.groups() == (str(code), name)


def test_ping_and_health(readonly: Endpoint) -> None:
    assert httpx.get(readonly.url + "/ping").text == "Ok.\n"
    assert httpx.get(readonly.url + "/replicas_status").text == "Ok.\n"
    assert get(readonly).text == "Ok.\n"
    assert httpx.get(readonly.url + "/nope").status_code == 404


@pytest.mark.parametrize(
    "fmt",
    [
        "TabSeparated",
        "TabSeparatedWithNames",
        "TabSeparatedWithNamesAndTypes",
        "TSV",
        "CSV",
        "CSVWithNames",
        "JSON",
        "JSONEachRow",
        "JSONCompact",
        "RowBinary",
        "RowBinaryWithNamesAndTypes",
        "Native",
    ],
)
def test_output_formats_are_the_engines(readonly: Endpoint, ch_store: Store, fmt: str) -> None:
    by_clause = post(readonly, f"{SQL} FORMAT {fmt}")
    by_default = post(readonly, SQL, params={"default_format": fmt})
    engine = ch_store.raw_query(f"{SQL} FORMAT {fmt}")
    if fmt in ("JSON", "JSONCompact"):  # statistics (elapsed time) differ run to run
        for response in (by_clause, by_default):
            assert json.loads(response.content)["data"] == json.loads(engine)["data"]
    else:
        assert by_clause.content == by_default.content == engine
    for response in (by_clause, by_default):
        assert response.status_code == 200
        assert response.headers["X-ClickHouse-Format"] == fmt


def test_literal_bodies(readonly: Endpoint) -> None:
    assert post(readonly, SQL).content == b"0\t0\n1\t1\n"
    assert post(readonly, SQL + " FORMAT TSVWithNamesAndTypes").text == (
        "n\ts\nUInt8\tString\n0\t0\n1\t1\n"
    )
    assert post(readonly, SQL + " FORMAT RowBinary").content == b"\x00\x010\x01\x011"
    assert post(readonly, SQL + " FORMAT JSONEachRow").text == '{"n":0,"s":"0"}\n{"n":1,"s":"1"}\n'
    assert post(readonly, SQL + " FORMAT CSV").text == '0,"0"\n1,"1"\n'


def test_format_clause_beats_default_format(readonly: Endpoint) -> None:
    response = post(
        readonly, "SELECT 1 AS x FORMAT CSVWithNames", params={"default_format": "JSON"}
    )
    assert response.text == '"x"\n1\n'
    assert response.headers["X-ClickHouse-Format"] == "CSVWithNames"
    plain = post(readonly, "SELECT 1 AS x")
    assert plain.headers["X-ClickHouse-Format"] == "TabSeparated"
    assert plain.headers["Content-Type"].startswith("text/tab-separated-values")


def test_headers_clickhouse_connect_reads(readonly: Endpoint) -> None:
    response = post(readonly, "SELECT 1", params={"query_id": "q-42"})
    assert response.headers["X-ClickHouse-Query-Id"] == "q-42"
    assert response.headers["X-ClickHouse-Timezone"]
    assert response.headers["X-ClickHouse-Server-Display-Name"]
    summary = json.loads(response.headers["X-ClickHouse-Summary"])
    assert {"read_rows", "read_bytes", "written_rows", "elapsed_ns"} <= summary.keys()


def test_query_in_url_in_body_or_both(readonly: Endpoint) -> None:
    assert get(readonly, params={"query": "SELECT 1 + 1"}).text == "2\n"
    assert post(readonly, "SELECT 3").text == "3\n"
    # ClickHouse joins the URL part and the body with a newline
    assert post(readonly, "4", params={"query": "SELECT 3,"}).text == "3\t4\n"


def test_query_parameters(readonly: Endpoint) -> None:
    response = get(
        readonly,
        params={
            "query": "SELECT {s:String}, {n:UInt32} + 1, {a:Array(String)}",
            "param_s": "tab\\there",
            "param_n": "41",
            "param_a": "['x','y']",
        },
    )
    assert response.text == "tab\\there\t42\t['x','y']\n"


def test_database_param_and_default_database(readonly: Endpoint) -> None:
    assert post(readonly, "SELECT currentDatabase()").text == f"{readonly.database}\n"
    assert post(readonly, "SELECT currentDatabase()", params={"database": "system"}).text == (
        "system\n"
    )
    assert post(readonly, "SELECT count() > 0 FROM llm_usage_mv LIMIT 0").status_code in (200, 404)
    assert post(readonly, "EXISTS TABLE otel_traces").text == "1\n"


def test_settings_pass_through_and_transport_params_are_ignored(readonly: Endpoint) -> None:
    response = post(
        readonly,
        "SELECT getSetting('max_threads'), getSetting('readonly')",
        params={
            "max_threads": "3",
            "session_id": "abc",
            "wait_end_of_query": "1",
            "send_progress_in_http_headers": "1",
            "buffer_size": "1000",
        },
    )
    assert response.text == "3\t1\n"
    assert_error(
        post(readonly, "SELECT 1", params={"no_such_setting": "1"}), 115, "UNKNOWN_SETTING", 404
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"limit": "1"}, (200, "0\n")),  # Grafana's row limit
        ({"max_execution_time": "5"}, (200, "0\n1\n")),  # a limit may be lowered
        ({"readonly": "1"}, (200, "0\n1\n")),  # the value in force: the engine accepts it
        ({"max_threads": "lots"}, (400, "36")),  # an allowed setting, validated
        ({"max_threads": "100000"}, (400, "36")),
        ({"max_execution_time": "0"}, (400, "36")),  # a limit cannot be lifted
        ({"max_memory_usage": str(1 << 40)}, (400, "36")),
        ({"readonly": "0"}, (500, "164")),  # any other change: the engine refuses it
        ({"readonly": "2"}, (500, "164")),
        ({"allow_ddl": "0"}, (500, "164")),
        ({"format_schema": "/etc/passwd:M"}, (500, "164")),
        ({"no_such_setting": "1"}, (404, "115")),
        ({"bad name": "1"}, (404, "115")),
    ],
)
def test_settings_allowed_validated_or_refused_by_the_engine(
    readonly: Endpoint, params: dict[str, str], expected: tuple[int, str]
) -> None:
    response = post(readonly, "SELECT number FROM numbers(2)", params=params)
    status, detail = expected
    assert response.status_code == status, response.text
    if status == 200:
        assert response.text == detail
    else:
        assert response.headers["X-ClickHouse-Exception-Code"] == detail


def test_errors_are_shaped_like_clickhouse(readonly: Endpoint) -> None:
    assert_error(post(readonly, "SELECT * FROM no_such_table"), 60, "UNKNOWN_TABLE", 404)
    assert_error(post(readonly, "SELEC 1"), 62, "SYNTAX_ERROR", 400)
    assert_error(post(readonly, "SELECT 1 +"), 62, "SYNTAX_ERROR", 400)
    assert_error(post(readonly, "SELECT no_such_function()"), 46, "UNKNOWN_FUNCTION", 404)
    assert_error(post(readonly, "SELECT 1 FORMAT NoSuchFormat"), 73, "UNKNOWN_FORMAT", 404)
    assert_error(post(readonly, b""), 62, "SYNTAX_ERROR", 400)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO otel_traces (TraceId) VALUES ('x')",
        "DROP TABLE otel_traces",
        "ALTER TABLE llm_usage DELETE WHERE 1",
        "CREATE TABLE evil (a UInt8) ENGINE = Memory",
        "SET readonly = 0",
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT 1 INTO OUTFILE 'evil.tsv'",
        "TRUNCATE TABLE llm_usage",
        "SYSTEM FLUSH LOGS",
        "OPTIMIZE TABLE llm_usage FINAL",
        "KILL QUERY WHERE 1",
        "(SELECT 1) INTO OUTFILE 'evil.tsv'",
        "ATTACH TABLE evil",
        "DETACH TABLE llm_usage",
        "RENAME TABLE llm_usage TO evil",
        "GRANT SELECT ON *.* TO default",
        "EXPLAIN SELECT 1",
        "SELECT * FROM {f:Identifier}",
    ],
)
def test_read_only_refuses_writes(readonly: Endpoint, sql: str) -> None:
    response = post(readonly, sql, params={"param_f": "file('/etc/hostname')"})
    assert response.status_code >= 400
    assert response.headers["X-ClickHouse-Exception-Code"] in ("164", "62", "47", "60", "497")


def test_read_only_guards(readonly: Endpoint, ch_store: Store) -> None:
    # several statements: a syntax error, and nothing of it runs
    assert_error(post(readonly, "SELECT 1; DROP TABLE otel_traces"), 62, "SYNTAX_ERROR", 400)
    # the engine session itself is read-only, so settings cannot lift it
    assert_error(post(readonly, "SELECT 1", params={"readonly": "0"}), 164, "READONLY", 500)
    names = {
        r[0]
        for r in ch_store.query(
            "SELECT name FROM system.tables WHERE database = {d:String}", {"d": ch_store.database}
        )[1]
    }
    assert {"otel_traces", "llm_usage"} <= names
    assert "evil" not in names


def test_get_is_read_only_even_when_writable(writable: Endpoint) -> None:
    response = get(writable, params={"query": "CREATE TABLE evil2 (a UInt8) ENGINE = Memory"})
    assert_error(response, 164, "READONLY", 500)


def test_auth(readonly: Endpoint, open_readonly: Endpoint) -> None:
    assert httpx.post(open_readonly.url, content="SELECT 1").text == "1\n"
    assert post(readonly, "SELECT 1").text == "1\n"
    headers = {"X-ClickHouse-User": "meterline", "X-ClickHouse-Key": PASSWORD}
    assert httpx.post(readonly.url, content="SELECT 1", headers=headers).text == "1\n"
    params = {"user": "meterline", "password": PASSWORD}
    assert httpx.post(readonly.url, content="SELECT 1", params=params).text == "1\n"

    wrong = post(readonly, "SELECT 1", auth=("meterline", "nope"))
    assert_error(wrong, 516, "AUTHENTICATION_FAILED", 403)
    assert_error(
        post(readonly, "SELECT 1", auth=("default", PASSWORD)), 516, "AUTHENTICATION_FAILED", 403
    )
    bad_headers = {"X-ClickHouse-User": "meterline", "X-ClickHouse-Key": "nope"}
    assert_error(
        httpx.post(readonly.url, content="SELECT 1", headers=bad_headers),
        516,
        "AUTHENTICATION_FAILED",
        403,
    )
    missing = httpx.post(readonly.url, content="SELECT 1")
    assert_error(missing, 194, "REQUIRED_PASSWORD", 401)
    two_ways = post(readonly, "SELECT 1", params=params)
    assert_error(two_ways, 516, "AUTHENTICATION_FAILED", 403)


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("lz4", lz4.frame.compress),
        ("zstd", None),
    ],
)
def test_compressed_request_bodies(readonly: Endpoint, encoding: str, pack: Any) -> None:
    if pack is None:
        from meterline.clickhouse_http._encoding import compress

        def pack(data: bytes) -> bytes:
            return compress(data, "zstd")

    body = pack(b"SELECT 'compressed', ") + pack(b"7")  # two frames / members
    response = post(readonly, body, headers={"Content-Encoding": encoding})
    assert response.text == "compressed\t7\n"


def test_unknown_or_broken_compression(readonly: Endpoint) -> None:
    assert_error(
        post(readonly, b"x", headers={"Content-Encoding": "snappy2"}),
        89,
        "UNKNOWN_COMPRESSION_METHOD",
        500,
    )
    assert_error(
        post(readonly, b"not gzip", headers={"Content-Encoding": "gzip"}),
        271,
        "CANNOT_DECOMPRESS",
        500,
    )


def test_chunked_request_body(readonly: Endpoint) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"SELECT "
        yield b"'chunked'"
        yield b" AS c"

    response = post(readonly, chunks())
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.text == "chunked\n"


def test_compressed_response_when_asked(readonly: Endpoint) -> None:
    params = {"enable_http_compression": "1"}
    for encoding in ("gzip", "zstd", "lz4", "deflate"):
        with httpx.Client(auth=AUTH) as client:
            request = client.build_request(
                "POST",
                readonly.url,
                content=SQL,
                params=params,
                headers={"Accept-Encoding": encoding},
            )
            response = client.send(request, stream=True)
            raw = b"".join(response.iter_raw())
        assert response.headers["Content-Encoding"] == encoding
        from clickhouse_connect.driver._backend.httpcommon import decompress_response

        assert decompress_response(raw, encoding) == b"0\t0\n1\t1\n"
    plain = post(readonly, SQL, headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in plain.headers


def test_block_compression_is_refused(readonly: Endpoint) -> None:
    assert_error(post(readonly, "SELECT 1", params={"compress": "1"}), 48, "NOT_IMPLEMENTED", 501)


def test_read_only_body_limit(readonly: Endpoint) -> None:
    huge = b"SELECT '" + b"x" * (1 << 20) + b"'"
    assert_error(post(readonly, huge), 229, "QUERY_IS_TOO_LARGE", 413)


# --- Grafana's ClickHouse plugin (clickhouse-go v2, protocol "http") ---------------------
# clickhouse-go's conn_http.go: every request is a POST with the SQL as the body and the
# URL parameters database, default_format=Native and client_protocol_version (its TCP
# protocol revision); it first runs "SELECT displayName(), version(), revision(),
# timezone()" and decodes Native blocks at that revision: BlockInfo, then per column
# name, type, a custom-serialization byte (revision >= 54454) and the data.
GRAFANA_REVISION = 54460


class _Native:
    """A minimal independent Native reader for the plain types the tests select."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        assert len(chunk) == n
        self.pos += n
        return chunk

    def varuint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def string(self) -> str:
        return self.take(self.varuint()).decode()

    def block(self) -> dict[str, list[Any]]:
        assert self.take(8) == b"\x01\x00\x02\xff\xff\xff\xff\x00"  # BlockInfo
        columns, rows = self.varuint(), self.varuint()
        out: dict[str, list[Any]] = {}
        for _ in range(columns):
            name, type_name = self.string(), self.string()
            assert self.take(1) == b"\x00"  # no custom serialization
            if type_name == "String":
                out[name] = [self.string() for _ in range(rows)]
            elif type_name in ("UInt32", "DateTime"):
                out[name] = list(struct.unpack(f"<{rows}I", self.take(4 * rows)))
            elif type_name == "UInt64":
                out[name] = list(struct.unpack(f"<{rows}Q", self.take(8 * rows)))
            else:
                raise AssertionError(type_name)
        return out


def grafana_post(ep: Endpoint, sql: str) -> httpx.Response:
    params = {
        "database": ep.database,
        "default_format": "Native",
        "client_protocol_version": str(GRAFANA_REVISION),
        # clickhouse-go: its context deadline + 5 s (the plugin's default query timeout
        # is 60 s; sqlds puts it on the context; context.go queryOptions)
        "max_execution_time": "64",
    }
    headers = {
        "User-Agent": "clickhouse-go/2.40.1 (database/sql; lv:go/1.24; os:linux) grafana-datasource/4.10"
    }
    return httpx.post(
        ep.url + "/", params=params, content=sql, auth=AUTH, headers=headers, timeout=30
    )


def test_grafana_plugin_hello(readonly: Endpoint) -> None:
    response = grafana_post(readonly, "SELECT displayName(), version(), revision(), timezone()")
    assert response.status_code == 200, response.text
    assert response.headers["X-ClickHouse-Format"] == "Native"
    reader = _Native(response.content)
    block = reader.block()
    assert reader.pos == len(response.content)
    display_name, version, revision, timezone = (v[0] for v in block.values())
    assert display_name == response.headers["X-ClickHouse-Server-Display-Name"]
    assert re.match(r"^\d+\.\d+", version)
    assert revision > 54000
    assert timezone == response.headers["X-ClickHouse-Timezone"]


def test_grafana_plugin_panel_query(readonly: Endpoint, ch_store: Store) -> None:
    at = datetime(2031, 5, 4, 10, 30)
    hour = calendar.timegm(datetime(2031, 5, 4, 10).timetuple())
    day = calendar.timegm(datetime(2031, 5, 4).timetuple())
    columns = ["Timestamp", "TraceId", "SpanId", "SpanName", "ServiceName", "SpanAttributes"]
    attrs = {
        "gen_ai.provider.name": "openai",
        "gen_ai.response.id": "grafana-resp-1",
        "gen_ai.usage.input_tokens": "120",
        "gen_ai.usage.output_tokens": "30",
        "meterline.consumer.id": "grafana-consumer",
    }
    row = [at, "t-grafana", "s-grafana", "chat gpt-4o", "svc", attrs]
    ch_store.insert_columns("otel_traces", [[v] for v in row], columns)
    # what the plugin sends after expanding $__fromTime, $__toTime and $__timeInterval
    sql = (
        "SELECT toStartOfInterval(Timestamp, INTERVAL 3600 second) AS time,\n"
        "       toUInt64(sum(InputTokens)) AS input_tokens\n"
        f"FROM llm_usage_counted(start = toDateTime({day}), end = toDateTime({day + 86400}))\n"
        "WHERE ConsumerId = 'grafana-consumer'\n"
        "GROUP BY time ORDER BY time"
    )
    response = grafana_post(readonly, sql)
    assert response.status_code == 200, response.text
    block = _Native(response.content).block()
    assert block == {"time": [hour], "input_tokens": [120]}
    # the plugin cannot write through a read-only endpoint
    assert_error(grafana_post(readonly, "DROP TABLE llm_usage"), 164, "READONLY", 500)
