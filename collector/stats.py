"""Sample the writer's counters into ``ingest_stats`` (meterline.store.ingest_schema), so
Grafana's pipeline health dashboard shows the arrival rate, the spans rejected at ingest,
the writer's queue and the ingest lag — numbers that otherwise live only in this
process's memory.

One small insert per interval (default 10 s) from a daemon thread; a failed insert is
logged and the next sample covers both intervals (the counters are cumulative in the
writer, the rows hold deltas). :meth:`IngestStats.stop` writes a last sample.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime

from meterline.collector.writer import Writer, WriterStats
from meterline.store import Store
from meterline.store.ingest_schema import INGEST_STATS_COLUMNS

logger = logging.getLogger(__name__)


class IngestStats:
    """A thread writing a sample of ``writer`` every ``interval`` seconds."""

    def __init__(self, store: Store, writer: Writer, *, interval: float = 10.0) -> None:
        self._store = store
        self._writer = writer
        self._interval = interval
        self._process = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._last = WriterStats(0, 0, 0, 0, 0, 0)
        self._last_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meterline-ingest-stats",
                                        daemon=True)  # fmt: skip

    def start(self) -> IngestStats:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def sample(self) -> bool:
        """Write one sample now; False (logged) when the store refused it."""
        now = self._writer.stats()
        at = time.monotonic()
        last = self._last
        row = (
            datetime.now(UTC),
            self._process,
            at - self._last_at,
            now.written - last.written,
            now.rejected - last.rejected,
            now.refused - last.refused,
            now.pending,
            now.pending_bytes,
            now.lag_ns // 1_000_000,
        )
        try:
            self._store.insert_columns(
                "ingest_stats", [[v] for v in row], list(INGEST_STATS_COLUMNS)
            )
        except Exception as exc:
            logger.warning("ingest stats not recorded (the next sample covers them): %s", exc)
            return False
        self._last, self._last_at = now, at
        return True

    def stop(self) -> None:
        """Stop the thread and write a last sample."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()
