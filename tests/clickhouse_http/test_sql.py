"""The statement classifier: kinds, FORMAT clauses, INSERT data offsets, read-only rules."""

from __future__ import annotations

import pytest

from meterline.clickhouse_http._errors import ClickHouseError
from meterline.clickhouse_http._sql import UNSAFE_FUNCTIONS, check_read_only, parse


def _read_only(text: str) -> None:
    check_read_only(parse(text), denied_functions=UNSAFE_FUNCTIONS)


@pytest.mark.parametrize(
    ("text", "kind", "fmt"),
    [
        ("SELECT 1", "SELECT", None),
        ("  -- leading comment\n# hash comment\nselect 1", "SELECT", None),
        ("/* outer /* nested */ still comment */ (SELECT 1) UNION ALL (SELECT 2)", "SELECT", None),
        ("((SELECT 1))", "SELECT", None),
        ("WITH 1 AS x SELECT x FORMAT JSON", "WITH", "JSON"),
        ("SELECT 'FORMAT CSV' FORMAT TSV SETTINGS max_threads = 1", "SELECT", "TSV"),
        ("SELECT format FROM t", "SELECT", None),
        ("SELECT 1 FORMAT `JSONEachRow`;;", "SELECT", "JSONEachRow"),
        ("SELECT $tag$ FORMAT Native; DROP $tag$", "SELECT", None),
        ("SHOW TABLES", "SHOW", None),
        ("DESC otel_traces", "DESC", None),
        ("EXISTS TABLE llm_usage", "EXISTS", None),
    ],
)
def test_kind_and_format(text: str, kind: str, fmt: str | None) -> None:
    statement = parse(text)
    assert (statement.kind, statement.format) == (kind, fmt)
    _read_only(text)


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1; DROP TABLE otel_traces",
        "SELECT 1;\n  -- comment\n SELECT 2",
        "SELECT ';' ; SELECT 2",
    ],
)
def test_multi_statements_are_syntax_errors(text: str) -> None:
    with pytest.raises(ClickHouseError) as caught:
        parse(text)
    assert caught.value.code == 62
    assert "Multi-statements are not allowed" in caught.value.message


@pytest.mark.parametrize("text", ["", "  -- only a comment\n", "SELECT 'open", "SELECT (1", "/* x"])
def test_malformed_is_syntax_error(text: str) -> None:
    with pytest.raises(ClickHouseError) as caught:
        parse(text)
    assert caught.value.code == 62


@pytest.mark.parametrize(
    "text",
    [
        "INSERT INTO t VALUES (1)",
        "insert into t select 1",
        "ALTER TABLE t DELETE WHERE 1",
        "DROP TABLE otel_traces",
        "CREATE TABLE x (a UInt8) ENGINE = Memory",
        "TRUNCATE TABLE llm_usage",
        "SET readonly = 0",
        "SYSTEM FLUSH LOGS",
        "OPTIMIZE TABLE llm_usage FINAL",
        "KILL QUERY WHERE 1",
        "(INSERT INTO t VALUES (1))",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "SELECT file('/etc/hostname')",
        "SELECT * FROM `url`('http://127.0.0.1/', 'LineAsString')",
        "SELECT * FROM remote('127.0.0.1', system.one)",
        "SELECT * FROM python(secrets)",
        "SELECT * FROM numbers(1) INTO OUTFILE '/tmp/x'",
        "SELECT * FROM {f:Identifier}('x')",
    ],
)
def test_read_only_refusals(text: str) -> None:
    with pytest.raises(ClickHouseError) as caught:
        _read_only(text)
    assert (caught.value.code, caught.value.name, caught.value.status) == (164, "READONLY", 500)


def test_insert_with_format_data_starts_after_the_newline() -> None:
    text = "INSERT INTO db.t (a, `b c`) SETTINGS async_insert = 0 FORMAT Native  \r\n\x00\x01;DROP"
    statement = parse(text)
    insert = statement.insert
    assert insert is not None
    assert insert.head == "INSERT INTO db.t (a, `b c`)"
    assert insert.settings == "SETTINGS async_insert = 0"
    assert insert.format == "Native"
    assert text[insert.data_offset :] == "\x00\x01;DROP"


def test_insert_values_data_is_not_lexed() -> None:
    text = "INSERT INTO t VALUES ('a;b'), (2); DROP TABLE t"
    insert = parse(text).insert
    assert insert is not None
    assert insert.format == "Values"
    assert text[insert.data_offset :] == "('a;b'), (2); DROP TABLE t"


def test_insert_select_is_a_whole_statement() -> None:
    statement = parse("INSERT INTO t SELECT * FROM values('a UInt8', 1)")
    assert statement.insert is None
    with pytest.raises(ClickHouseError):
        parse("INSERT INTO t SELECT 1; DROP TABLE t")
