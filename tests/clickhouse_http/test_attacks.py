"""Bypass attempts against the read-only endpoint, one row per trick, run on the real engine.

Every row must be refused, and whatever the engine or the endpoint answers (errors
included), the canary file's content never appears, no target file is written, no
connection reaches the local listener and no script runs. The rows are the classes the
issue found plus variants: quotes ClickHouse accepts that a hand-written lexer does not
(typographic ``‘’`` / ``“”``), Unicode whitespace, escapes inside quoted identifiers,
comments, statements hidden after a string, table functions that only ``DESCRIBE`` or
``SHOW ... WHERE`` evaluate, settings that name files (URL, ``SETTINGS``, form fields),
``INTO OUTFILE`` and ``INSERT INTO FUNCTION``. Each runs with and without a key.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clickhouse_http.conftest import PASSWORD, Canary, Endpoint, Listener


@dataclass
class Attack:
    sql: str
    params: dict[str, str] = field(default_factory=dict)
    get: bool = False
    form: bool = False


def A(sql: str, id: str, **kwargs: Any) -> Any:
    return pytest.param(Attack(sql, **kwargs), id=id)


# {canary}: a file with a secret; {url} / {hostport}: the counting listener; {out}: a path
# that must not exist afterwards; {script}: an executable in the engine's user_scripts dir
# that would create {out}.
ATTACKS = [
    # --- files read through the scalar function file() (readonly=1 alone allows it) -------
    A("SELECT “file”('{canary}')", "file-typographic-identifier-quotes"),
    A("SELECT file\u2003('{canary}')", "file-em-space-before-paren"),
    A("SELECT file\u00a0('{canary}')", "file-nbsp-before-paren"),
    A("SELECT\u3000file\u3000(\u3000'{canary}'\u3000)", "file-ideographic-spaces"),
    A("SELECT `fi\\x6ce`('{canary}')", "file-backtick-hex-escape"),
    A("SELECT \"fi\\x6ce\"('{canary}')", "file-double-quote-hex-escape"),
    A("SELECT `\\x66ile`('{canary}')", "file-backtick-leading-escape"),
    A("SELECT ‘'’ AS a, file('{canary}') AS b --'", "file-hidden-after-typographic-string"),
    A("SELECT 1 AS “'”, file('{canary}') AS b --'", "file-hidden-after-typographic-ident"),
    A("SELECT * APPLY(file) FROM (SELECT '{canary}' AS p)", "file-through-apply"),
    A("SELECT * APPLY “file” FROM (SELECT '{canary}' AS p)", "file-through-apply-quoted"),
    A("SELECT arrayMap(x -> “file”(x), ['{canary}'])", "file-in-lambda"),
    A("SELECT 1 UNION ALL SELECT length(“file”('{canary}'))", "file-in-union"),
    A("SELECT * FROM view(SELECT “file”('{canary}') AS c)", "file-in-view-table-function"),
    A("SELECT (SELECT “file”('{canary}'))", "file-in-scalar-subquery"),
    A("WITH “file”('{canary}') AS c SELECT c", "file-in-with"),
    A("SELECT 1 WHERE “file”('{canary}') != ''", "file-in-where"),
    A("SHOW TABLES WHERE name = “file”('{canary}')", "file-in-show-tables-where"),
    A("SHOW DATABASES LIMIT length(“file”('{canary}'))", "file-in-show-limit"),
    A("SHOW COLUMNS FROM otel_traces WHERE “file”('{canary}') != ''", "file-in-show-columns-where"),
    A("DESC (SELECT “file”('{canary}'))", "file-in-describe-subquery"),
    A(
        "SELECT “file”({p:String})",
        "file-path-from-query-parameter",
        params={"param_p": "{canary}"},
    ),
    A("SELECT “file”('{canary}')", "file-in-url-query-get", get=True),
    A("SELECT “file”('{canary}')", "file-in-multipart-form", form=True),
    # --- files read through table functions (schema inference runs before access checks) --
    A("SELECT * FROM “file”('{canary}', 'LineAsString')", "file-table-function"),
    A("DESCRIBE TABLE “file”('{canary}', 'CSVWithNames')", "describe-file-schema-inference"),
    A("DESCRIBE “file”('{canary}', 'CSVWithNames')", "describe-file-no-table-keyword"),
    A("SELECT * FROM “filesystem”('{canary_dir}')", "filesystem-table-function"),
    A("SELECT * FROM format(LineAsString, “file”('{canary}'))", "format-of-file"),
    A("SELECT * FROM numbers(1) WHERE “file”('{canary}') != ''", "file-in-where-of-numbers"),
    # --- several statements: the second one would run -------------------------------------
    A(
        "; SELECT file('{canary}') --'",
        "multi-statement-split-url-and-body",
        params={"query": "SELECT ‘'’"},
    ),
    A("SELECT ‘'’; SELECT file('{canary}') --'", "multi-statement-after-typographic-string"),
    A("SELECT 1 AS “'”; SELECT file('{canary}') --'", "multi-statement-after-typographic-ident"),
    A("SELECT ‘'’; KILL QUERY WHERE 1 SYNC --'", "multi-statement-kill"),
    # --- network ---------------------------------------------------------------------------
    A("SELECT * FROM loop(“url”('{url}', 'CSV', 'a String')) LIMIT 1", "url-inside-loop"),
    A("SELECT * FROM view(SELECT * FROM “url”('{url}', 'CSV', 'a String'))", "url-inside-view"),
    A("SELECT 1 FROM system.one JOIN “url”('{url}', 'CSV', 'a UInt8') AS u ON 1", "url-in-join"),
    A("SELECT * FROM “url”('{url}', 'LineAsString')", "url-table-function"),
    A("DESCRIBE TABLE “url”('{url}', 'CSV')", "describe-url-schema-inference"),
    A("SELECT * FROM “s3”('http://{hostport}/bucket/key.csv', 'CSV')", "s3-table-function"),
    A("DESCRIBE TABLE “s3”('http://{hostport}/bucket/key.csv')", "describe-s3"),
    A("SELECT * FROM “remote”('{hostport}', system.one)", "remote-table-function"),
    A("SELECT * FROM “mysql”('{hostport}', 'd', 't', 'u', 'p')", "mysql-table-function"),
    A("SELECT * FROM “postgresql”('{hostport}', 'd', 't', 'u', 'p')", "postgresql-table-function"),
    A(
        "SELECT ‘'’; INSERT INTO FUNCTION url('{url}', 'CSV', 'a String') SELECT 'x' --'",
        "insert-into-url",
    ),
    A(
        "SELECT ‘'’; BACKUP TABLE otel_traces TO S3('http://{hostport}/bucket/b') --'",
        "backup-to-s3",
    ),
    # --- files written (a .pth in site-packages runs code at the next interpreter start) ---
    A("SELECT ‘'’ FROM numbers(1) INTO OUTFILE '{out}' --'", "into-outfile-hidden"),
    A("SELECT ‘'’ FROM numbers(1) INTO OUTFILE '{out}.pth' --'", "into-outfile-pth"),
    A("SELECT ‘'’ INTO OUTFILE '{out}' APPEND FORMAT TSV --'", "into-outfile-append"),
    A("SELECT ‘'’ INTO OUTFILE '{out}' AND STDOUT --'", "into-outfile-and-stdout"),
    A("SELECT ‘'’ INTO OUTFILE '{out}' COMPRESSION 'gzip' --'", "into-outfile-compressed"),
    A("SHOW TABLES LIKE ‘'’ INTO OUTFILE '{out}' --'", "show-into-outfile"),
    A("SELECT ‘'’; SELECT 1 INTO OUTFILE '{out}' --'", "into-outfile-second-statement"),
    A(
        "SELECT ‘'’; INSERT INTO FUNCTION file('{out}', 'TSV', 'a String') SELECT 'x' --'",
        "insert-into-function-file",
    ),
    A(
        "SELECT 1 AS “'”; INSERT INTO TABLE FUNCTION file('{out}', 'TSV', 'a String') VALUES ('x') --'",
        "insert-into-table-function-file",
    ),
    # --- processes -------------------------------------------------------------------------
    A("SELECT * FROM “executable”('{script}', 'TSV', 'x String')", "executable-table-function"),
    # --- settings that name files or lift limits: URL parameters ---------------------------
    A(
        "SELECT 1 AS x FORMAT Template",
        "url-format-template-row",
        params={"format_template_row": "{canary}"},
    ),
    A(
        "SELECT 1 AS x FORMAT Template",
        "url-format-template-resultset",
        params={"format_template_resultset": "{canary}"},
    ),
    A(
        "SELECT 1 AS x FORMAT Protobuf",
        "url-output-format-schema",
        params={"output_format_schema": "{out}"},
    ),
    A("SELECT “file”('{canary}')", "url-readonly-2", params={"readonly": "2"}),
    A(
        "SELECT 1",
        "url-allow-experimental-eval",
        params={"allow_experimental_eval_table_function": "1"},
    ),
    A("SELECT 1", "url-lift-memory-limit", params={"max_memory_usage": "0"}),
    A("SELECT 1", "url-lift-time-limit", params={"max_execution_time": "0"}),
    A(
        "SELECT 1 AS x FORMAT Template",
        "form-format-template-row",
        form=True,
        params={"format_template_row": "{canary}"},
    ),
    # --- the same settings in a SETTINGS clause ---------------------------------------------
    A(
        "SELECT 1 AS x FORMAT Template SETTINGS format_template_row = '{canary}'",
        "settings-format-template-row",
    ),
    A(
        "SELECT 1 AS x FORMAT Template SETTINGS format_template_resultset = '{canary}'",
        "settings-format-template-resultset",
    ),
    A(
        "SELECT 1 AS x SETTINGS format_template_row = '{canary}' FORMAT Template",
        "settings-before-format",
    ),
    A("SELECT 1 SETTINGS max_memory_usage = 0", "settings-lift-memory-limit"),
    # --- writes and administration the engine itself must refuse ---------------------------
]

# Rows today's main already refused, or not reliably (its lexer or readonly = 2 stopped
# them, or the engine failed first): kept so that the new boundary is held to them too.
ALSO_REFUSED_BEFORE = [
    A("SELECT 1 FROM system.one WHERE dummy IN “url”('{url}', 'CSV', 'a UInt8')", "url-as-in-set"),
    A("SELECT file('{canary}')", "file-plain"),
    A("SELECT $$'$$ AS a, file('{canary}') AS b --'", "file-hidden-after-heredoc"),
    A("SELECT * FROM “sqlite”('{canary}', 't')", "sqlite-table-function"),
    A("SELECT 1;\u2003SELECT “file”('{canary}')", "multi-statement-unicode-space"),
    A("SELECT 1 /* ; */; SELECT “file”('{canary}')", "multi-statement-after-comment"),
    A("DESCRIBE TABLE “azureBlobStorage”('http://{hostport}/acc', 'c', 'b.csv')", "describe-azure"),
    A("BACKUP TABLE otel_traces TO S3('http://{hostport}/bucket/b')", "backup-to-s3-plain"),
    A("SELECT * FROM “python”(os)", "python-table-function"),
    A(
        "SELECT 1 AS x FORMAT Protobuf",
        "url-format-schema-protobuf",
        params={"format_schema": "{canary}:Msg"},
    ),
    A(
        "SELECT 1 AS x FORMAT CapnProto",
        "url-format-schema-capnproto",
        params={"format_schema": "{canary}:Msg"},
    ),
    A(
        "SELECT * FROM “file”('{canary}', 'LineAsString')",
        "url-readonly-0",
        params={"readonly": "0"},
    ),
    A("SELECT 1", "url-dialect", params={"dialect": "prql"}),
    A(
        "SELECT 1",
        "url-json-ast-dialect",
        params={"enable_json_ast_dialect": "1", "dialect": "clickhouse_json"},
    ),
    A(
        "SELECT 1 AS x FORMAT Protobuf SETTINGS format_schema = '{canary}:Msg'",
        "settings-format-schema",
    ),
    A(
        "SELECT * FROM (SELECT 1 AS x SETTINGS format_template_row = '{canary}') FORMAT Template",
        "settings-in-subquery",
    ),
    A(
        "SELECT * FROM “file”('{canary}', 'LineAsString') SETTINGS readonly = 0",
        "settings-readonly-0",
    ),
    A("SELECT ‘'’; DROP TABLE otel_traces --'", "hidden-drop"),
    A("SELECT ‘'’; INSERT INTO otel_traces (TraceId) VALUES ('x') --'", "hidden-insert"),
    A("KILL QUERY WHERE 1 SYNC", "kill-query"),
    A("DESCRIBE TABLE otel_traces INTO OUTFILE '{out}'", "describe-into-outfile"),
    A("EXISTS TABLE otel_traces INTO OUTFILE '{out}'", "exists-into-outfile"),
    A("SHOW CREATE TABLE otel_traces INTO OUTFILE '{out}'", "show-create-into-outfile"),
    A("SHOW PROCESSLIST INTO OUTFILE '{out}'", "show-processlist-into-outfile"),
    A("SELECT ‘'’; SYSTEM SHUTDOWN --'", "hidden-system-shutdown"),
]


@pytest.fixture(params=["with-key", "no-key"])
def target(request: pytest.FixtureRequest) -> Endpoint:
    return request.getfixturevalue("readonly" if request.param == "with-key" else "open_readonly")


@pytest.fixture
def script(engine_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An executable in the engine's user_scripts folder that creates a marker file."""
    folder = engine_dir / "user_scripts"
    folder.mkdir(exist_ok=True)
    marker = tmp_path / "script-ran"
    path = folder / f"meterline-{uuid.uuid4().hex[:8]}.sh"
    path.write_text(f"#!/bin/sh\ntouch '{marker}'\necho ran\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    try:
        yield path.name, marker
    finally:
        path.unlink()


def send(ep: Endpoint, attack: Attack, values: dict[str, str]) -> httpx.Response:
    sql = attack.sql.format(**values)
    params = {k: v.format(**values) for k, v in attack.params.items()}
    auth = ("meterline", PASSWORD)
    if attack.get:
        return httpx.get(ep.url, params={**params, "query": sql}, auth=auth, timeout=60)
    if attack.form:
        files = {"query": (None, sql), **{k: (None, v) for k, v in params.items()}}
        return httpx.post(ep.url, files=files, auth=auth, timeout=60)
    return httpx.post(ep.url, params=params, content=sql.encode(), auth=auth, timeout=60)


def _format_values(attack: Attack) -> Attack:
    """``{p:String}`` placeholders survive ``str.format`` as ``{{p:String}}``."""
    sql = attack.sql.replace("{p:String}", "{{p:String}}")
    return Attack(sql, attack.params, attack.get, attack.form)


@pytest.mark.parametrize("attack", ATTACKS + ALSO_REFUSED_BEFORE)
def test_attack_is_refused_and_touches_nothing(
    target: Endpoint,
    attack: Attack,
    canary: Canary,
    listener: Listener,
    tmp_path: Path,
    script: tuple[str, Path],
) -> None:
    out = tmp_path / f"written-{uuid.uuid4().hex[:8]}"
    script_name, marker = script
    values = {
        "canary": str(canary.path),
        "canary_dir": str(canary.path.parent),
        "url": f"http://127.0.0.1:{listener.port}/x",
        "hostport": f"127.0.0.1:{listener.port}",
        "out": str(out),
        "script": script_name,
    }
    before = listener.accepted
    response = send(target, _format_values(attack), values)
    assert response.status_code >= 400, response.text
    assert "X-ClickHouse-Exception-Code" in response.headers
    assert not canary.leaked(response), response.text
    assert listener.accepted == before, "the engine opened a connection"
    assert sorted(os.listdir(tmp_path)) == [], "a file was written"
    assert not marker.exists(), "a script ran"


def test_every_table_function_is_harmless(
    readonly: Endpoint, canary: Canary, listener: Listener, tmp_path: Path, ch_store: Any
) -> None:
    """All of the engine's table functions, called and DESCRIBEd with file and network
    arguments: none reaches outside; those that could are refused before they run."""
    from meterline.clickhouse_http._policy import SAFE_TABLE_FUNCTIONS

    names = [r[0] for r in ch_store.query("SELECT name FROM system.table_functions")[1]]
    assert len(names) > 50
    url = f"http://127.0.0.1:{listener.port}/bucket/key.csv"
    by_file = f"'{canary.path}', 'CSVWithNames'"
    by_url = f"'{url}', 'CSV'"
    by_host = f"'127.0.0.1:{listener.port}', 'd', 't', 'u', 'p'"
    by_write = f"'{tmp_path}/w.tsv', 'TSV', 'a String'"
    requests = []
    for name in sorted(names):
        if name.lower() in SAFE_TABLE_FUNCTIONS:
            argument_sets = [by_file, by_url, by_host, by_write]  # allowed: must stay inside
        elif any(word in name.lower() for word in ("file", "local", "sqlite", "python")):
            argument_sets = [by_file]
        else:
            argument_sets = [by_url]
        for args in argument_sets:
            requests += [f"SELECT * FROM “{name}”({args})", f"DESCRIBE TABLE “{name}”({args})"]

    def run(sql: str) -> tuple[str, httpx.Response]:
        response = httpx.post(
            readonly.url, content=sql.encode(), auth=("meterline", PASSWORD), timeout=60
        )
        return sql, response

    before = listener.accepted
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(run, requests))
    problems = []
    for sql, response in answers:
        name = sql.split("“", 1)[1].split("”", 1)[0]
        if canary.leaked(response):
            problems.append((sql, "leaked the canary", response.text[:200]))
        elif name.lower() not in SAFE_TABLE_FUNCTIONS and (
            response.headers.get("X-ClickHouse-Exception-Code") != "164"
        ):
            problems.append((sql, "not refused", response.text[:200]))
    assert problems == []
    assert listener.accepted == before, "a table function opened a connection"
    assert sorted(os.listdir(tmp_path)) == []


def test_database_is_unchanged_by_the_attacks(readonly: Endpoint, ch_store: Any) -> None:
    names = {r[0] for r in ch_store.query(
        "SELECT name FROM system.tables WHERE database = {d:String}", {"d": ch_store.database}
    )[1]}  # fmt: skip
    assert {"otel_traces", "llm_usage"} <= names
    assert ch_store.query("SELECT count() FROM {db}.otel_traces WHERE TraceId = 'x'")[1] == [(0,)]
