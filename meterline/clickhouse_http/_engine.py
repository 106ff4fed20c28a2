"""Run one HTTP request's statement on the embedded engine (chdb).

Contract:
- Every request gets a fresh chdb session (``chdb.connect`` on the store's data
  directory): its ``USE``, settings and ``readonly`` cannot leak into other requests or
  into the store's own clients. Calls block; the app runs them in worker threads.
- A read-only request (:meth:`ChdbEngine.run_read_only`) runs in this order: the
  :class:`~meterline.clickhouse_http._settings.Limits` and the request's allowed
  settings; ``SET readonly = 1``; the engine parses the text (``formatQuery`` /
  ``parseQueryToJSON`` / ``EXPLAIN AST``, with the text passed as a query parameter,
  never spliced into SQL) and ``_policy`` checks the tree; ``USE``; the request's other
  settings (the engine refuses a change); then the engine's *formatting* of the
  statement, so what runs is exactly what was checked.
- A writable request (:meth:`ChdbEngine.run_writable`, tests and migrations only) runs
  as sent. An INSERT carrying data is run as ``INSERT ... FROM INFILE <temp file>
  FORMAT x``, so the data never passes through the SQL parser.

Known limits: results are materialized in memory (bounded by ``max_result_bytes`` and
``max_memory_usage``), and query parameters are passed as the HTTP interface's escaped
text values.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meterline.clickhouse_http import _policy, _settings
from meterline.clickhouse_http._errors import ClickHouseError
from meterline.clickhouse_http._sql import Statement

logger = logging.getLogger(__name__)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# chdb's Python layer post-processes these "formats" into Python objects
_PYTHON_ONLY_FORMATS = frozenset({"arrowtable", "dataframe", "datastore"})
# the engine's error text for a wrapper call ends with the wrapper: not the client's query
_IN_SCOPE = re.compile(r":? In scope SELECT (formatQuery|hex)\(.*$", re.S)


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _param(value: str) -> str:
    """``value`` as a query parameter's escaped text (how the engine reads ``{x:String}``)."""
    return (
        value.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\x00", "\\0")
    )


def check_format_name(name: str) -> str:
    """Refuse names that are not plain format identifiers (or are chdb-only)."""
    if not _IDENT.match(name) or name.lower() in _PYTHON_ONLY_FORMATS:
        raise ClickHouseError("UNKNOWN_FORMAT", f"Unknown format {name}")
    return name


@dataclass
class Execution:
    """One statement to run and how."""

    text: str
    """The statement as the client sent it (writable: the statement up to any data)."""
    database: str
    default_format: str
    read_only: bool
    settings: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    statement: Statement | None = None
    """Writable requests: the classification of the text (``_sql``)."""
    insert_data: bytes = b""


@dataclass
class Outcome:
    body: bytes
    summary: dict[str, str]
    output_format: str
    produces_result: bool


class ChdbEngine:
    """The embedded engine at ``data_dir`` (shared with the store in this process)."""

    def __init__(
        self, data_dir: str | os.PathLike[str], *, limits: _settings.Limits | None = None
    ) -> None:
        # chdb compares engine paths literally: spell it as clickhouse-connect does
        self.path = os.path.realpath(os.fspath(data_dir))
        self.limits = limits or _settings.Limits()
        self.denied: frozenset[str] = _policy.OUTSIDE_FUNCTIONS

    def _connect(self) -> Any:
        import chdb

        return chdb.connect(self.path)

    @staticmethod
    def _query(conn: Any, sql: str, fmt: str, params: Mapping[str, str] | None = None) -> Any:
        try:
            return conn.query(sql, fmt, params=dict(params or {}))
        except Exception as exc:  # chdb raises ChdbError / RuntimeError with the engine's text
            raise ClickHouseError.from_engine(str(exc)) from exc

    def _rows(self, conn: Any, sql: str, params: Mapping[str, str] | None = None) -> list[str]:
        body = self._query(conn, sql, "TabSeparatedRaw", params).bytes() or b""
        return body.decode("utf-8", "replace").splitlines()

    def _set(self, conn: Any, settings: Mapping[str, str]) -> None:
        if settings:
            changes = ", ".join(f"{name} = {_literal(value)}" for name, value in settings.items())
            self._query(conn, f"SET {changes}", "TabSeparated")

    def server_info(self) -> tuple[str, str, str]:
        """``(version, timezone, display name)`` of the engine."""
        conn = self._connect()
        try:
            row = self._query(conn, "SELECT version(), timezone(), displayName()", "TabSeparated")
            version, tz, name = row.bytes().decode().rstrip("\n").split("\t")
            return version, tz, name
        finally:
            conn.close()

    def load_policy(self) -> None:
        """Read the denied function names from the engine's catalogue (see ``_policy``)."""
        conn = self._connect()
        try:
            catalogue = self._rows(conn, _policy.CATALOGUE_SQL)
            aliases = [tuple(r.split("\t", 1)) for r in self._rows(conn, _policy.ALIASES_SQL)]
            self.denied = _policy.denied_functions(catalogue, aliases)  # type: ignore[arg-type]
        finally:
            conn.close()

    # --- read-only --------------------------------------------------------------------

    def plan(self, conn: Any, text: str, params: Mapping[str, str]) -> _policy.Plan:
        """Parse ``text`` with the engine and check the tree (``_policy``).

        Raises:
            ClickHouseError: the engine's SYNTAX_ERROR, or READONLY.
        """
        q = {"q": _param(text)}
        try:
            [row] = self._rows(
                conn, "SELECT hex(formatQuery({q:String}) AS f), hex(parseQueryToJSON(f))", q
            )
            sql_hex, tree_hex = row.split("\t")
        except ClickHouseError:
            # a syntax error, or a statement parseQueryToJSON does not serialise
            try:
                [sql_hex] = self._rows(conn, "SELECT hex(formatQuery({q:String}))", q)
            except ClickHouseError as error:
                error.message = _IN_SCOPE.sub("", error.message)
                raise
            sql = _utf8(sql_hex)
            lines = self._rows(conn, f"EXPLAIN AST {sql}", params)
            [probe] = self._rows(
                conn,
                "SELECT formatQueryOrNull({q:String}) IS NULL",
                {"q": _param(sql + "\nFORMAT TabSeparated")},
            )
            return _policy.check_explain(lines, sql, has_format=probe == "1")
        tree = json.loads(bytes.fromhex(tree_hex).decode("utf-8", "surrogateescape"))
        return _policy.check_tree(tree, _utf8(sql_hex), denied=self.denied)

    def run_read_only(self, execution: Execution) -> Outcome:
        """Run a client's statement under ``readonly = 1`` (see the module docstring)."""
        allowed, others = _settings.split(execution.settings, self.limits)
        conn = self._connect()
        try:
            self._set(conn, {**self.limits.settings(), **allowed})
            self._query(conn, "SET readonly = 1", "TabSeparated")
            plan = self.plan(conn, execution.text, execution.params)
            output_format = check_format_name(plan.format or execution.default_format)
            self._query(conn, f"USE {_identifier(execution.database)}", "TabSeparated")
            for name, value in others.items():  # the engine refuses a change (READONLY)
                self._set(conn, {name: value})
            result = self._query(conn, plan.sql, output_format, execution.params)
            body = result.bytes() or b""
            return Outcome(body, _summary(result, body), output_format, True)
        finally:
            conn.close()

    # --- writable (tests, migrations) -------------------------------------------------

    def run_writable(self, execution: Execution) -> Outcome:
        """Run ``execution`` as sent, in a fresh session."""
        statement = execution.statement
        assert statement is not None
        output_format = check_format_name(statement.format or execution.default_format)
        conn = self._connect()
        try:
            self._query(conn, f"USE {_identifier(execution.database)}", "TabSeparated")
            for name, value in execution.settings.items():
                if not _IDENT.match(name):
                    raise ClickHouseError("UNKNOWN_SETTING", f"Unknown setting {name!r}")
                self._set(conn, {name: value})
            if statement.insert is not None:
                result = self._insert(conn, execution)
                body = b""
            else:
                result = self._query(conn, execution.text, output_format, execution.params)
                body = result.bytes() or b""
            return Outcome(body, _summary(result, body), output_format, statement.produces_result)
        finally:
            conn.close()

    def _insert(self, conn: Any, execution: Execution) -> Any:
        assert execution.statement is not None
        insert = execution.statement.insert
        assert insert is not None
        fmt = check_format_name(insert.format)
        with tempfile.NamedTemporaryFile(prefix="meterline-insert-", delete=False) as tmp:
            tmp.write(execution.insert_data)
        try:
            head = insert.head.encode("latin-1").decode("utf-8")
            settings = insert.settings.encode("latin-1").decode("utf-8")
            sql = f"{head} FROM INFILE {_literal(tmp.name)} {settings} FORMAT {fmt}"
            return self._query(conn, sql, "TabSeparated", execution.params)
        finally:
            os.unlink(tmp.name)


def _utf8(hex_text: str) -> str:
    try:
        return bytes.fromhex(hex_text).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClickHouseError(
            "SYNTAX_ERROR",
            "meterline: the query has a string whose bytes are not UTF-8 (such as '\\xFF'); "
            "this endpoint runs UTF-8 queries only",
        ) from exc


def _summary(result: Any, body: bytes) -> dict[str, str]:
    def stat(name: str) -> int:
        try:
            return int(getattr(result, name)())
        except Exception:
            return 0

    elapsed = 0
    try:
        elapsed = int(result.elapsed() * 1_000_000_000)
    except Exception:
        logger.debug("chdb result has no elapsed time", exc_info=True)
    return {
        "read_rows": str(stat("rows_read")),
        "read_bytes": str(stat("bytes_read")),
        "written_rows": str(stat("rows_written")),
        "written_bytes": str(stat("bytes_written")),
        "total_rows_to_read": "0",
        "result_rows": "0",
        "result_bytes": str(len(body)),
        "elapsed_ns": str(elapsed),
    }
