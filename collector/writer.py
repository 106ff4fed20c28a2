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
- Two ways to write, chosen once per writer: the Python path (``to_rows`` then
  clickhouse-connect's column insert, any store) or the native path (the engine
  decodes the OTLP protobuf itself, :mod:`meterline.collector.native`, embedded store
  only). Receivers call :meth:`Writer.decode`, so they never know which.
- ``threads``: inserts run on this many threads at once (the engine releases the GIL
  and scales across cores for concurrent inserts).
- ``linger``: after the first queued request, wait up to this long for more before an
  insert, while fewer than ``batch_min`` spans are queued. Each insert has a fixed
  cost (query analysis), so under load a little latency buys large batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meterline.collector import native
from meterline.collector.decode import COLUMNS, Rows, to_rows
from meterline.store import TRACES_TABLE, Store

logger = logging.getLogger(__name__)


Batchable = Rows | native.Scan
"""A decoded request: rows for the Python path, a scan for the native one."""


class Overloaded(Exception):
    """The store is behind; retry after :attr:`retry_after` seconds."""

    def __init__(self, pending: int, retry_after: int) -> None:
        super().__init__(f"{pending} spans waiting to be written; retry after {retry_after}s")
        self.retry_after = retry_after


class Closed(Exception):
    """The writer is shutting down and accepts nothing new."""


class Writer:
    """Batches rows from concurrent requests into durable inserts on ``threads`` threads."""

    def __init__(
        self,
        store: Store,
        *,
        max_pending: int = 200_000,
        batch_max: int = 50_000,
        native: bool = False,
        linger: float = 0.0,
        batch_min: int = 10_000,
        threads: int = 1,
    ):
        if native and store.kind != "chdb":
            raise ValueError(f"the native ingest path needs the embedded store, not {store!r}")
        self._store = store
        self._max_pending = max_pending
        self._batch_max = batch_max
        self.native = native
        """Whether the engine decodes the protobuf bodies (see the module docstring)."""
        self._linger = linger
        self._batch_min = batch_min
        self._queue: deque[tuple[Batchable, Future[int]]] = deque()
        self._pending = 0  # queued or being inserted: what back-pressure counts
        self._queued = 0  # in the queue only: what lingering waits for
        self._cond = threading.Condition()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._run, name=f"meterline-writer-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        self._rate = 100_000.0  # spans/s, smoothed; sizes Retry-After
        self.written = 0
        """Spans written since start."""
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def decode(
        self, request: ExportTraceServiceRequest, body: bytes | None, *, keep_all: bool
    ) -> Batchable:
        """What :meth:`submit` takes for a parsed request (``body``: its protobuf bytes,
        or ``None`` when it arrived as JSON)."""
        if self.native:
            raw = body if body is not None else request.SerializeToString()
            return native.scan(request, raw, keep_all=keep_all)
        return to_rows(request, keep_all=keep_all)

    def submit(self, rows: Batchable) -> Future[int]:
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
            self._queued += n
            self._cond.notify()
        return future

    def _take_batch(self) -> list[tuple[Batchable, Future[int]]] | None:
        with self._cond:
            while True:
                while not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                deadline = time.monotonic() + self._linger
                while (
                    self._queued < self._batch_min
                    and not self._closing
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(left)
                if self._queue:  # another writer thread may have taken it meanwhile
                    break
            batch = [self._queue.popleft()]
            size = len(batch[0][0])
            while self._queue and size + len(self._queue[0][0]) <= self._batch_max:
                item = self._queue.popleft()
                batch.append(item)
                size += len(item[0])
            self._queued -= size
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            items = [item for item, _ in batch]
            n = sum(len(item) for item in items)
            started = time.perf_counter()
            try:
                self._insert(items)
            except Exception as exc:
                logger.warning("insert of %d spans failed; the senders will retry: %s", n, exc)
                for _, future in batch:
                    future.set_exception(exc)
            else:
                elapsed = max(time.perf_counter() - started, 1e-6)
                logger.debug("inserted %d spans in %.3fs", n, elapsed)
                self._rate = 0.8 * self._rate + 0.2 * (n / elapsed)
                self.written += n
                for rows, future in batch:
                    future.set_result(len(rows))
            finally:
                with self._cond:
                    self._pending -= n

    def _insert(self, items: list[Batchable]) -> None:
        if self.native:
            native.insert(self._store, items)  # type: ignore[arg-type]
            return
        merged = items[0] if len(items) == 1 else Rows()
        if len(items) > 1:
            for rows in items:
                merged.extend(rows)  # type: ignore[arg-type]
        self._store.insert_columns(TRACES_TABLE, merged.columns, COLUMNS)  # type: ignore[union-attr]

    def close(self, timeout: float | None = 60.0) -> None:
        """Write everything queued, then stop the writer threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            logger.error(
                "the writer did not finish within %ss; %d spans unwritten", timeout, self._pending
            )
