"""One client API for chdb and ClickHouse servers, chosen by a keyword-only factory.

Contract:
- Every call may come from any thread. chdb serializes calls per client handle, so
  the store keeps one clickhouse-connect client per thread (all on the same engine
  path, which chdb shares inside the process); server clients are per thread too.
- SQL names tables as ``{db}.table``; :attr:`Store.db` is the quoted database.
- Values always travel as bound parameters (``{name:Type}``), never spliced in.

Known limits: chdb allows one data directory per process and per directory one
process, so the embedded store is opened by ``meterline serve`` and reached by other
tools through it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from meterline.errors import MeterlineError
from meterline.store.migrations import EMBEDDED_TUNING, MIGRATIONS, MIGRATIONS_TABLE_DDL

logger = logging.getLogger(__name__)

_CHDB_LOCK = threading.Lock()


class StoreError(MeterlineError):
    """The store could not be opened, migrated or queried."""


def quote_identifier(name: str) -> str:
    """Quote a ClickHouse identifier (database or table name) with backticks."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid identifier {name!r}")
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


class Store:
    """A ClickHouse database reached through clickhouse-connect.

    Create it with :func:`open_store`; call :meth:`migrate` before use.
    """

    def __init__(self, *, kind: str, database: str, client_kwargs: dict[str, Any]) -> None:
        self.kind = kind
        """``"chdb"`` (embedded) or ``"server"``."""
        self.database = database
        self.db = quote_identifier(database)
        self._client_kwargs = client_kwargs
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self.client()  # fail fast: a bad path or URL is reported at open time

    def __repr__(self) -> str:
        where = self._client_kwargs.get("path") or self._client_kwargs.get("host")
        return f"Store(kind={self.kind!r}, at={where!r}, database={self.database!r})"

    @property
    def data_dir(self) -> str | None:
        return self._client_kwargs.get("path") if self.kind == "chdb" else None

    def client(self) -> Any:
        """This thread's clickhouse-connect client."""
        client = getattr(self._local, "client", None)
        if client is None:
            import clickhouse_connect

            try:
                if self.kind == "chdb":
                    with _CHDB_LOCK:
                        client = clickhouse_connect.get_client(**self._client_kwargs)
                else:
                    client = clickhouse_connect.get_client(**self._client_kwargs)
            except Exception as exc:
                if self.kind == "chdb":
                    from meterline.store.datadir import DataDirError, holder_message

                    held = holder_message(Path(self._client_kwargs["path"]))
                    if held is not None:
                        raise DataDirError(held) from exc
                raise StoreError(f"cannot open the store {self!r}: {exc}") from exc
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self.client().command(sql.replace("{db}", self.db), parameters=parameters)

    def query(
        self,
        sql: str,
        parameters: dict[str, Any] | None = None,
        *,
        settings: dict[str, Any] | None = None,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a SELECT; return (column names, rows)."""
        result = self.client().query(
            sql.replace("{db}", self.db), parameters=parameters, settings=settings
        )
        return list(result.column_names), list(result.result_rows)

    def query_dicts(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        names, rows = self.query(sql, parameters)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def insert_columns(
        self,
        table: str,
        columns: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        *,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Insert column-oriented data; returns once the engine has written the parts."""
        self.client().insert(
            f"{self.database}.{table}" if "." not in table else table,
            list(columns),
            column_names=list(column_names),
            column_oriented=True,
            settings=settings,
        )

    def raw_query(
        self, sql: str, *, fmt: str | None = None, settings: dict[str, Any] | None = None
    ) -> bytes:
        """Run SQL as given (the database is the default one) and return raw bytes."""
        return self.client().raw_query(sql, fmt=fmt, settings=settings)

    def migrate(self, *, upto: int | None = None) -> list[int]:
        """Apply pending migrations in order; return the versions applied now.

        Args:
            upto: stop after this version (tests build databases of older releases).

        On the embedded store, also (re)apply :data:`EMBEDDED_TUNING`.
        """
        self.client().command(f"CREATE DATABASE IF NOT EXISTS {self.db}")
        self.command(MIGRATIONS_TABLE_DDL)
        _, rows = self.query("SELECT Version FROM {db}.schema_migrations FINAL")
        done = {r[0] for r in rows}
        applied: list[int] = []
        for migration in MIGRATIONS:
            if migration.version in done or (upto is not None and migration.version > upto):
                continue
            logger.info("applying migration %d: %s", migration.version, migration.name)
            for statement in migration.statements:
                self.command(statement)
            if migration.run is not None:
                migration.run(self)
            self.insert_columns(
                "schema_migrations", [[migration.version], [migration.name]], ["Version", "Name"]
            )
            applied.append(migration.version)
        if self.kind == "chdb":
            for statement in EMBEDDED_TUNING:
                self.command(statement)
        return applied

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # closing is best effort
                logger.debug("closing a store client failed", exc_info=True)
        self._local = threading.local()


def _server_kwargs(url: str, database: str | None) -> tuple[dict[str, Any], str]:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https", "clickhouse"):
        raise ValueError(
            f"unsupported ClickHouse URL scheme {parsed.scheme!r} in {url!r}; use http or https"
        )
    if not parsed.hostname:
        raise ValueError(f"ClickHouse URL {url!r} has no host")
    secure = parsed.scheme == "https"
    path_db = unquote(parsed.path.strip("/"))
    kwargs: dict[str, Any] = {
        "host": parsed.hostname,
        "port": parsed.port or (8443 if secure else 8123),
        "username": unquote(parsed.username or "default"),
        "password": unquote(parsed.password or ""),
        "secure": secure,
        "autogenerate_session_id": False,
    }
    return kwargs, database or path_db or "meterline"


def open_store(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    clickhouse_url: str | None = None,
    database: str | None = None,
) -> Store:
    """Open the embedded store at ``data_dir`` or a ClickHouse server at ``clickhouse_url``.

    Args:
        data_dir: chdb data directory (created if missing); the default backend.
        clickhouse_url: ``http(s)://user:pass@host:port/database`` of a server.
        database: the database holding meterline's tables (default ``meterline``;
            for a server URL, the URL's path when this is not given).

    Raises:
        ValueError: both or neither location given, or a malformed URL.
        StoreError: the backend could not be reached or opened.
        DataDirError: ``data_dir`` is a file, not writable, or another process has it
            (a :class:`StoreError`).
    """
    if (data_dir is None) == (clickhouse_url is None):
        raise ValueError("give exactly one of data_dir (embedded) or clickhouse_url (server)")
    if clickhouse_url is not None:
        kwargs, db = _server_kwargs(clickhouse_url, database)
        return Store(kind="server", database=db, client_kwargs=kwargs)
    from meterline.store.datadir import check_data_dir

    check_data_dir(Path(os.fspath(data_dir)))  # type: ignore[arg-type]
    path = os.path.abspath(os.fspath(data_dir))  # type: ignore[arg-type]
    os.makedirs(path, exist_ok=True)
    return Store(
        kind="chdb",
        database=database or "meterline",
        client_kwargs={"interface": "chdb", "path": path},
    )
