"""The writable mode's statement splitter: kinds, FORMAT clauses, INSERT data offsets.

Not a security boundary (read-only requests are parsed by the engine: test_attacks).
"""

from __future__ import annotations

import pytest

from meterline.clickhouse_http._errors import ClickHouseError
from meterline.clickhouse_http._sql import parse


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
        ("CREATE TABLE t (a UInt8) ENGINE = Memory", "CREATE", None),
    ],
)
def test_kind_and_format(text: str, kind: str, fmt: str | None) -> None:
    statement = parse(text)
    assert (statement.kind, statement.format) == (kind, fmt)


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
