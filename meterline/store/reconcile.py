"""``otel_traces`` and ``llm_usage`` agree again after a process was killed mid-insert.

Why: ``llm_usage`` is filled by the materialized view ``llm_usage_mv`` in the same
insert as ``otel_traces``, but ClickHouse commits the table's part before the view's,
so a kill -9 between the two (seen in about half of the kills during sustained ingest)
leaves spans in ``otel_traces`` without their usage. Those spans were never
acknowledged, so their sender's retry would repair the usage; until then, or if it
never comes, the two tables disagree.

Contract (embedded store):
- A checkpoint file, ``<data dir>/meterline-ingest-<database>.checkpoint``, holds a time
  T such that every insert into ``otel_traces`` that started before T had returned
  (its view rows were committed). :class:`Checkpointer` advances it every
  :data:`CHECKPOINT_INTERVAL` seconds while the server runs, from the writer's
  ``safe_time()``, and once more after the writer has closed.
- At start, before anything is inserted, :func:`reconcile_at_start` re-derives the
  ``llm_usage`` rows of every ``otel_traces`` part modified since T (less
  :data:`MARGIN` for the file system's and ``modification_time``'s granularity): the
  view's own query (:data:`~meterline.store.migrations.USAGE_MV_QUERY`) is run over
  just those parts (``additional_table_filters``) into ``llm_usage``, with merges of
  ``otel_traces`` stopped meanwhile so the parts stay as listed. Then the checkpoint is
  set to now. Parts written after T are those of the inserts in flight when the process
  died, plus parts merged since (a merge rewrites older rows too: they are re-derived
  as well, costing time at start, never counts).
- Counted once: a re-derived row is the view's row for the same span, with the same
  ``DedupKey`` and ``Version``; ``llm_usage`` is read deduplicated (``FINAL``), so a row
  derived twice counts once.
- No checkpoint file (a new data directory, or one written by a version without this
  module): nothing is re-derived; the checkpoint is created.

Known limits: a ClickHouse server store has no data directory here; its inserts run in
the server (a killed meterline cancels them there), and the OpenTelemetry Collector's
own retries apply. The views must keep rows re-derivable: a view that aggregates
(rather than deduplicates) would count twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from meterline.store.migrations import TRACES_TABLE, USAGE_MV_QUERY, USAGE_TABLE

if TYPE_CHECKING:
    from meterline.store.backend import Store

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_INTERVAL",
    "CHECKPOINT_NAME",
    "MARGIN",
    "Checkpointer",
    "read_checkpoint",
    "reconcile",
    "reconcile_at_start",
    "write_checkpoint",
]

CHECKPOINT_NAME = "meterline-ingest-{database}.checkpoint"
"""The checkpoint file in the data directory, one per database."""
CHECKPOINT_INTERVAL = 2.0
"""Seconds between checkpoints while the server runs (bounds what a restart re-derives)."""
MARGIN = 2.0
"""Seconds subtracted from the checkpoint: ``modification_time`` has whole seconds."""


def _path(store: Store) -> Path:
    """The checkpoint of the store's database (a data directory may hold several)."""
    if store.data_dir is None:
        raise ValueError(f"reconciliation needs the embedded store, not {store!r}")
    return Path(store.data_dir) / CHECKPOINT_NAME.format(database=quote(store.database, safe=""))


def read_checkpoint(store: Store) -> float | None:
    """The checkpoint's time (Unix seconds), or ``None`` when there is none or it is unreadable."""
    try:
        return float(_path(store).read_text(encoding="ascii").strip())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring the unreadable ingest checkpoint %s: %s", _path(store), exc)
        return None


def write_checkpoint(store: Store, when: float) -> None:
    """Atomically set the checkpoint to ``when`` (no fsync: an older one is only slower)."""
    path = _path(store)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{when:.6f}\n", encoding="ascii")
    os.replace(tmp, path)


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def reconcile(store: Store, *, since: float) -> int:
    """Re-derive ``llm_usage`` from the ``otel_traces`` parts modified at or after ``since``.

    Returns the number of ``otel_traces`` rows read. Run it while nothing inserts.
    """
    store.command(f"SYSTEM STOP MERGES {{db}}.{TRACES_TABLE}")
    try:
        _, rows = store.query(
            "SELECT name, rows FROM system.parts WHERE database = {database:String} "
            "AND table = {table:String} AND active "
            "AND toUnixTimestamp(modification_time) >= {since:Int64} ORDER BY name",
            {"database": store.database, "table": TRACES_TABLE, "since": int(since)},
        )
        if not rows:
            return 0
        parts = [name for name, _ in rows]
        selected = sum(count for _, count in rows)
        query = USAGE_MV_QUERY.replace("{db}", store.db)
        names = store.query(f"SELECT * FROM ({query}) LIMIT 0")[0]
        columns = ", ".join(f"`{name}`" for name in names)
        table = f"{store.database}.{TRACES_TABLE}"
        only = "_part IN (" + ", ".join(_literal(part) for part in parts) + ")"
        started = time.monotonic()
        store.client().command(
            f"INSERT INTO {store.db}.{USAGE_TABLE} ({columns}) SELECT {columns} FROM ({query})",
            settings={"additional_table_filters": f"{{{_literal(table)}: {_literal(only)}}}"},
        )
        logger.info(
            "re-derived llm_usage from %d otel_traces rows in %d parts written since %s (%.1fs)",
            selected, len(parts), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
            time.monotonic() - started,
        )  # fmt: skip
        return selected
    finally:
        store.command(f"SYSTEM START MERGES {{db}}.{TRACES_TABLE}")


def reconcile_at_start(store: Store) -> int:
    """Re-derive the usage of what was being written when the last run stopped (see module doc).

    Returns the number of ``otel_traces`` rows read (0 when the last run closed cleanly
    long enough ago, or there is no checkpoint).
    """
    now = time.time()
    checkpoint = read_checkpoint(store)
    read = 0
    if checkpoint is None:
        logger.info("no ingest checkpoint in %s: starting one", store.data_dir)
    else:
        read = reconcile(store, since=checkpoint - MARGIN)
    write_checkpoint(store, now)
    return read


class Checkpointer:
    """Advances the checkpoint from ``safe_time`` every ``interval`` seconds on a thread."""

    def __init__(
        self,
        store: Store,
        safe_time: Callable[[], float],
        *,
        interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        self._store = store
        self._safe_time = safe_time
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meterline-checkpoint", daemon=True)
        self._thread.start()

    def _advance(self) -> None:
        try:
            write_checkpoint(self._store, self._safe_time())
        except OSError as exc:  # the next one may succeed; a stale one only costs time
            logger.warning("cannot write the ingest checkpoint: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._advance()

    def stop(self) -> None:
        """Stop the thread and write a last checkpoint (call after the writer closed)."""
        self._stop.set()
        self._thread.join()
        self._advance()
