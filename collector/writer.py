"""The durable batch writer: many requests in, one insert out, acks after the write.

Contract:
- :meth:`Writer.submit` queues a request's rows and returns a future that
  resolves only after an insert containing them returned from the engine (the
  parts are written; with ``fsync`` they are also fsynced). A failed insert
  fails every future in it, so the sender retries; nothing is acknowledged
  that was not written.
- Rows of concurrent requests are merged into one insert (up to ``batch_max``
  spans), which is what makes small OTLP batches cheap.
- Back-pressure: when more than ``max_pending`` spans wait, :meth:`submit`
  raises :class:`Overloaded` at once (the collector answers 503 / UNAVAILABLE
  with Retry-After); nothing is dropped silently.
- :meth:`close` stops accepting, writes everything queued, then returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

from meterline.collector.decode import COLUMNS, Rows
from meterline.store import TRACES_TABLE, Store

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The store is behind; retry after :attr:`retry_after` seconds."""

    def __init__(self, pending: int, retry_after: int) -> None:
        super().__init__(f"{pending} spans waiting to be written; retry after {retry_after}s")
        self.retry_after = retry_after


class Closed(Exception):
    """The writer is shutting down and accepts nothing new."""


class Writer:
    """Batches rows from concurrent requests into durable inserts on one thread."""

    def __init__(self, store: Store, *, max_pending: int = 200_000, batch_max: int = 50_000):
        self._store = store
        self._max_pending = max_pending
        self._batch_max = batch_max
        self._queue: deque[tuple[Rows, Future[int]]] = deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="meterline-writer", daemon=True)
        self._rate = 100_000.0  # spans/s, smoothed; sizes Retry-After
        self.written = 0
        """Spans written since start."""
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, rows: Rows) -> Future[int]:
        """Queue ``rows``; the future gives the number written once durable."""
        future: Future[int] = Future()
        n = len(rows)
        if n == 0:
            future.set_result(0)
            return future
        with self._cond:
            if self._closing:
                raise Closed("the collector is shutting down")
            if self._pending and self._pending + n > self._max_pending:
                retry_after = max(1, min(30, round(self._pending / max(self._rate, 1.0))))
                raise Overloaded(self._pending, retry_after)
            self._queue.append((rows, future))
            self._pending += n
            self._cond.notify()
        return future

    def _take_batch(self) -> list[tuple[Rows, Future[int]]] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            size = len(batch[0][0])
            while self._queue and size + len(self._queue[0][0]) <= self._batch_max:
                item = self._queue.popleft()
                batch.append(item)
                size += len(item[0])
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            if len(batch) == 1:
                merged = batch[0][0]
            else:
                merged = Rows()
                for rows, _ in batch:
                    merged.extend(rows)
            n = len(merged)
            started = time.perf_counter()
            try:
                self._store.insert_columns(TRACES_TABLE, merged.columns, COLUMNS)
            except Exception as exc:
                logger.warning("insert of %d spans failed; the senders will retry: %s", n, exc)
                for _, future in batch:
                    future.set_exception(exc)
            else:
                elapsed = max(time.perf_counter() - started, 1e-6)
                self._rate = 0.8 * self._rate + 0.2 * (n / elapsed)
                self.written += n
                for rows, future in batch:
                    future.set_result(len(rows))
            finally:
                with self._cond:
                    self._pending -= n

    def close(self, timeout: float | None = 60.0) -> None:
        """Write everything queued, then stop the writer thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error(
                "the writer did not finish within %ss; %d spans unwritten", timeout, self._pending
            )
