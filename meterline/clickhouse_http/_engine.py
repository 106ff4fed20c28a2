"""Run one HTTP request's statement on the embedded engine (chdb).

Contract:
- Every request gets a fresh chdb session (``chdb.connect`` on the store's data
  directory, ~1 ms): its ``USE``, settings and ``readonly`` cannot leak into other
  requests or into the store's own clients. Calls block; the app runs them in worker
  threads.
- A read-only request first sets ``readonly = 2`` (the engine then refuses any write
  and any change of ``readonly`` itself) before the request's own settings.
- An INSERT carrying data is run as ``INSERT ... FROM INFILE <temp file> FORMAT x``, so
  the data never passes through the SQL parser.

Known limits: results are materialized in memory (no streaming), and the engine's
query parameters are passed as the HTTP interface's escaped text values.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

from meterline.clickhouse_http._errors import ClickHouseError
from meterline.clickhouse_http._sql import Statement

logger = logging.getLogger(__name__)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# chdb's Python layer post-processes these "formats" into Python objects
_PYTHON_ONLY_FORMATS = frozenset({"arrowtable", "dataframe", "datastore"})


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def check_format_name(name: str) -> str:
    """Refuse names that are not plain format identifiers (or are chdb-only)."""
    if not _IDENT.match(name) or name.lower() in _PYTHON_ONLY_FORMATS:
        raise ClickHouseError("UNKNOWN_FORMAT", f"Unknown format {name}")
    return name


@dataclass
class Execution:
    """One statement to run and how."""

    statement: Statement
    sql: str
    """The statement text to send (unused for an INSERT with data)."""
    database: str
    output_format: str
    read_only: bool
    settings: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    insert_data: bytes = b""


@dataclass
class Outcome:
    body: bytes
    summary: dict[str, str]


class ChdbEngine:
    """The embedded engine at ``data_dir`` (shared with the store in this process)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        # chdb compares engine paths literally: spell it as clickhouse-connect does
        self.path = os.path.realpath(os.fspath(data_dir))

    def _connect(self) -> Any:
        import chdb

        return chdb.connect(self.path)

    @staticmethod
    def _query(conn: Any, sql: str, fmt: str, params: dict[str, str] | None = None) -> Any:
        try:
            return conn.query(sql, fmt, params=params or {})
        except Exception as exc:  # chdb raises ChdbError / RuntimeError with the engine's text
            raise ClickHouseError.from_engine(str(exc)) from exc

    def server_info(self) -> tuple[str, str, str]:
        """``(version, timezone, display name)`` of the engine."""
        conn = self._connect()
        try:
            row = self._query(conn, "SELECT version(), timezone(), displayName()", "TabSeparated")
            version, tz, name = row.bytes().decode().rstrip("\n").split("\t")
            return version, tz, name
        finally:
            conn.close()

    def table_functions(self) -> frozenset[str]:
        """Lower-case names of the table functions the engine knows."""
        conn = self._connect()
        try:
            rows = self._query(conn, "SELECT name FROM system.table_functions", "TabSeparated")
            return frozenset(line.lower() for line in rows.bytes().decode().split("\n") if line)
        finally:
            conn.close()

    def run(self, execution: Execution) -> Outcome:
        """Run ``execution`` in a fresh session; raise :class:`ClickHouseError` on failure."""
        conn = self._connect()
        try:
            if execution.read_only:
                self._query(conn, "SET readonly = 2", "TabSeparated")
            self._query(conn, f"USE {_identifier(execution.database)}", "TabSeparated")
            for name, value in execution.settings.items():
                if not _IDENT.match(name):
                    raise ClickHouseError("UNKNOWN_SETTING", f"Unknown setting {name!r}")
                self._query(conn, f"SET {name} = {_literal(value)}", "TabSeparated")
            if execution.statement.insert is not None:
                result = self._insert(conn, execution)
                body = b""
            else:
                result = self._query(conn, execution.sql, execution.output_format, execution.params)
                body = result.bytes() or b""
            return Outcome(body, _summary(result, body))
        finally:
            conn.close()

    def _insert(self, conn: Any, execution: Execution) -> Any:
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
