"""The durable batch writer: many requests in, one insert out, acks after the write.

Contract:
- :meth:`Writer.submit` queues a request's rows and returns a future that resolves
  only after every span of it was either written by an insert that returned from the
  engine (the parts are written; with ``fsync`` they are also fsynced) or refused by
  the engine for its own data. The future's result is the number of spans written;
  spans the engine refused are added to the item's ``rejected`` and ``errors`` (for
  ``partial_success``) before it resolves. Nothing is acknowledged that was not
  written.
- Rows of concurrent requests are merged into one insert (up to ``batch_max``
  spans and ``batch_max_bytes`` of request bodies: the engine takes about 7 times a
  body's size to insert it when its values are large), which is what makes small OTLP
  batches cheap.
- One request costs nothing to the others merged with it
  (:mod:`meterline.collector.failures` tells whose fault a failed insert is):
  - the store's fault (memory, disk, availability, …): every request of the insert
    fails, so their senders retry (503 / UNAVAILABLE);
  - the data's fault: the insert is retried in halves, down to the failing request,
    then within it down to the failing spans, which are rejected; everything else is
    written and acknowledged. A request may cost at most :data:`ISOLATION_SPLITS`
    splits; beyond that, the spans still failing together are rejected together;
  - an unknown error: isolated down to the request like a data error, which is then
    answered "retry" rather than rejected on a guess.
- By construction an insert never spans more partitions than the engine takes in one
  block (``max_partitions_per_insert_block``, 100 by default; ``otel_traces`` is
  partitioned by day): requests are merged only while their spans' start times fall on
  at most ``limit // 2`` distinct UTC days (:attr:`Writer.days_per_insert`; one UTC day
  falls on at most two dates of any server time zone), and a request whose spans fall
  on more is split into pieces that do (all written before its ack).
- Back-pressure: when more than ``max_pending`` spans or ``max_pending_bytes`` bytes of
  request bodies wait, :meth:`submit` raises :class:`Overloaded` at once (the
  collector answers 503 / UNAVAILABLE with Retry-After); nothing is dropped silently.
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
- :meth:`safe_time` is the wall-clock time before which every insert has returned
  (what :mod:`meterline.store.reconcile` checkpoints).

Known limit: ClickHouse does not roll back an insert that fails in a materialized
view after the table's part was written; spans refused that way may remain in
``otel_traces`` although reported rejected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from meterline.collector import native
from meterline.collector.decode import COLUMNS, Rows, to_rows
from meterline.collector.failures import Cause, cause_of, describe
from meterline.collector.parse import Parsed
from meterline.store import TRACES_TABLE, Store

logger = logging.getLogger(__name__)


Batchable = Rows | native.Scan
"""A decoded request: rows for the Python path, a scan for the native one."""

DAY_NS = 86_400 * 1_000_000_000
ISOLATION_SPLITS = 32
"""Splits one request may cost while its failing spans are looked for."""
_ERRORS_KEPT = 5


class Overloaded(Exception):
    """The store is behind; retry after :attr:`retry_after` seconds."""

    def __init__(self, pending: int, retry_after: int, what: str = "spans") -> None:
        super().__init__(f"{pending} {what} waiting to be written; retry after {retry_after}s")
        self.retry_after = retry_after


class Closed(Exception):
    """The writer is shutting down and accepts nothing new."""


@dataclass(eq=False)
class _Request:
    """A submitted request; its future resolves once every piece of it is settled."""

    item: Batchable
    future: Future[int]
    nbytes: int
    pieces: int = 0
    written: int = 0
    failure: BaseException | None = None
    splits_left: int = ISOLATION_SPLITS


@dataclass(eq=False)
class _Piece:
    """Spans of one request inserted together (the whole request, usually)."""

    request: _Request
    item: Batchable
    days: frozenset[int] = field(default=frozenset())
    """The UTC days of its spans' start times, or a superset (set for queued pieces)."""


@dataclass(frozen=True)
class WriterStats:
    """A snapshot of the writer's counters (:meth:`Writer.stats`)."""

    written: int
    """Spans written since start."""
    rejected: int
    """Spans rejected before the store since start (answered in ``partial_success``)."""
    refused: int
    """Spans the engine refused since start (also answered as rejected)."""
    pending: int
    """Spans accepted and not yet written: the queue."""
    pending_bytes: int
    lag_ns: int
    """Largest delay, among the writes since the previous snapshot, from the newest span's
    start to its write (0: no write)."""


class Writer:
    """Batches rows from concurrent requests into durable inserts on ``threads`` threads."""

    def __init__(
        self,
        store: Store,
        *,
        max_pending: int = 200_000,
        max_pending_bytes: int = 128 * 1024 * 1024,
        batch_max: int = 50_000,
        batch_max_bytes: int = 32 * 1024 * 1024,
        native: bool = False,
        linger: float = 0.0,
        batch_min: int = 10_000,
        threads: int = 1,
    ):
        if native and store.kind != "chdb":
            raise ValueError(f"the native ingest path needs the embedded store, not {store!r}")
        self._store = store
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._batch_max = batch_max
        self._batch_max_bytes = batch_max_bytes
        self.native = native
        """Whether the engine decodes the protobuf bodies (see the module docstring)."""
        self._linger = linger
        self._batch_min = batch_min
        self.days_per_insert = _days_per_insert(store)
        """Distinct UTC days the spans of one insert may start on (see the module doc)."""
        self._queue: deque[_Piece] = deque()
        self._pending = 0  # spans queued or being inserted: what back-pressure counts
        self._pending_bytes = 0  # bodies of requests not settled
        self._queued = 0  # in the queue only: what lingering waits for
        self._cond = threading.Condition()
        self._settle_lock = threading.Lock()
        self._closing = False
        self._inflight: dict[int, float] = {}  # thread id -> wall time its insert started
        self._threads = [
            threading.Thread(target=self._run, name=f"meterline-writer-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        self._rate = 100_000.0  # spans/s, smoothed; sizes Retry-After
        self.written = 0
        """Spans written since start."""
        self.refused = 0
        """Spans the engine refused for their data since start."""
        self.rejected = 0
        """Spans rejected before the store (unreadable, invalid at decode) since start."""
        self._lag_max_ns = 0  # the oldest "newest span" of a write since stats() last ran
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def stats(self) -> WriterStats:
        """The counters since start, the queue now, and the largest lag of a write since
        the previous call (which it resets): what ``ingest_stats`` records."""
        with self._cond:
            lag, self._lag_max_ns = self._lag_max_ns, 0
            return WriterStats(
                written=self.written,
                rejected=self.rejected,
                refused=self.refused,
                pending=self._pending,
                pending_bytes=self._pending_bytes,
                lag_ns=lag,
            )

    def decode(self, parsed: Parsed, *, keep_all: bool) -> Batchable:
        """What :meth:`submit` takes for a parsed request, with the spans the parser
        could not read counted as rejected."""
        if self.native:
            body = parsed.body if parsed.body is not None else parsed.request.SerializeToString()
            item: Batchable = native.scan(parsed.request, body, keep_all=keep_all)
        else:
            item = to_rows(parsed.request, keep_all=keep_all)
            item.nbytes = parsed.size
        unreadable = parsed.rejected(keep_all=keep_all)
        if unreadable:
            item.rejected += len(unreadable)
            item.errors[:0] = unreadable[:_ERRORS_KEPT]
            del item.errors[_ERRORS_KEPT:]
        return item

    def submit(self, rows: Batchable) -> Future[int]:
        """Queue ``rows``; the future gives the number written once durable."""
        future: Future[int] = Future()
        n = len(rows)
        if rows.rejected:
            with self._cond:
                self.rejected += rows.rejected
        if n == 0:
            future.set_result(0)
            return future
        nbytes = rows.nbytes
        request = _Request(rows, future, nbytes)
        first_day, last_day = rows.first // DAY_NS, rows.last // DAY_NS
        if last_day - first_day >= self.days_per_insert:
            pieces = self._by_day(request, rows)
        else:
            pieces = [_Piece(request, rows, frozenset(range(first_day, last_day + 1)))]
        request.pieces = len(pieces)
        with self._cond:
            if self._closing:
                raise Closed("the collector is shutting down")
            if self._pending and self._pending + n > self._max_pending:
                raise Overloaded(self._pending, self._retry_after())
            if self._pending_bytes and self._pending_bytes + nbytes > self._max_pending_bytes:
                raise Overloaded(self._pending_bytes, self._retry_after(), "bytes of requests")
            self._queue.extend(pieces)
            self._pending += n
            self._pending_bytes += nbytes
            self._queued += n
            self._cond.notify()
        return future

    def safe_time(self) -> float:
        """Wall-clock time before which every insert has returned (now when none runs)."""
        now = time.time()
        with self._cond:
            return min(self._inflight.values(), default=now)

    def _retry_after(self) -> int:
        return max(1, min(30, round(self._pending / max(self._rate, 1.0))))

    def _by_day(self, request: _Request, item: Batchable) -> list[_Piece]:
        """``item`` in pieces whose spans start on at most :attr:`days_per_insert` days."""
        days = [start // DAY_NS for start in item.starts()]
        by_day: dict[int, list[int]] = {}
        for index, day in enumerate(days):
            by_day.setdefault(day, []).append(index)
        ordered = sorted(by_day)
        chunks = [ordered[i : i + self.days_per_insert]
                  for i in range(0, len(ordered), self.days_per_insert)]  # fmt: skip
        if len(chunks) == 1:
            return [_Piece(request, item, frozenset(ordered))]
        logger.info("a request's spans start on %d days: written in %d pieces",
                    len(ordered), len(chunks))  # fmt: skip
        groups = [[index for day in chunk for index in by_day[day]] for chunk in chunks]
        return [
            _Piece(request, part, frozenset(chunk))
            for part, chunk in zip(item.split(groups), chunks, strict=True)
        ]

    def _take_batch(self) -> list[_Piece] | None:
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
            size, nbytes = len(batch[0].item), batch[0].item.nbytes
            days = batch[0].days
            while self._queue:
                piece = self._queue[0]
                if size + len(piece.item) > self._batch_max:
                    break
                if nbytes + piece.item.nbytes > self._batch_max_bytes:
                    break
                if not piece.days <= days:
                    union = days | piece.days
                    if len(union) > self.days_per_insert:
                        break
                    days = union
                batch.append(self._queue.popleft())
                size += len(piece.item)
                nbytes += piece.item.nbytes
            self._queued -= size
            self._inflight[threading.get_ident()] = time.time()
            return batch

    def _run(self) -> None:
        me = threading.get_ident()
        while (batch := self._take_batch()) is not None:
            n = sum(len(piece.item) for piece in batch)
            try:
                self._write(batch)
            except BaseException as exc:  # a bug of ours: answer "retry", keep the thread
                logger.exception("the writer failed on %d spans", n)
                for piece in batch:
                    self._settle(piece, failure=exc)
            finally:
                with self._cond:
                    self._pending -= n
                    self._inflight.pop(me, None)

    def _write(self, pieces: list[_Piece]) -> bool:
        """Insert ``pieces`` (isolating whoever fails); True if any span was written."""
        n = sum(len(piece.item) for piece in pieces)
        started = time.perf_counter()
        try:
            self._insert([piece.item for piece in pieces])
        except Exception as exc:
            return self._isolate(pieces, exc)
        elapsed = max(time.perf_counter() - started, 1e-6)
        logger.debug("inserted %d spans in %.3fs", n, elapsed)
        self._rate = 0.8 * self._rate + 0.2 * (n / elapsed)
        lag = time.time_ns() - max(piece.item.last for piece in pieces)
        with self._cond:
            self.written += n
            self._lag_max_ns = max(self._lag_max_ns, lag)
        for piece in pieces:
            self._settle(piece, written=len(piece.item))
        return True

    def _isolate(self, pieces: list[_Piece], exc: Exception) -> bool:
        """After ``pieces`` failed together with ``exc``: find and answer who failed."""
        n = sum(len(piece.item) for piece in pieces)
        cause = cause_of(exc)
        if cause is Cause.STORE:
            logger.warning("insert of %d spans failed; the senders will retry: %s", n, exc)
            for piece in pieces:
                self._settle(piece, failure=exc)
            return False
        if len(pieces) > 1:
            logger.info("insert of %d spans failed (%s): retrying in halves", n, describe(exc))
            left, right = _halves(pieces)
            wrote = self._write(left)
            if not wrote and cause is Cause.UNKNOWN:  # nothing goes in: not one request's
                logger.warning("insert of %d spans failed; the senders will retry: %s", n, exc)
                for piece in right:
                    self._settle(piece, failure=exc)
                return False
            return self._write(right) or wrote
        [piece] = pieces
        request = piece.request
        if cause is Cause.UNKNOWN:
            logger.warning("a request of %d spans failed alone; its sender will retry: %s", n, exc)
            self._settle(piece, failure=exc)
            return False
        if n == 1 or request.splits_left <= 0:
            names = piece.item.names()
            what = f"span {names[0]!r}" if n == 1 else f"{n} spans, among them {names[0]!r},"
            reason = f"{what} refused by the store: {describe(exc)}"
            logger.warning("rejected %s", reason)
            self.refused += n
            self._settle(piece, rejected=n, reason=reason)
            return False
        request.splits_left -= 1
        half = n // 2
        left_item, right_item = piece.item.split([range(half), range(half, n)])
        with self._settle_lock:
            request.pieces += 1  # one piece becomes two
        wrote = self._write([_Piece(request, left_item)])
        return self._write([_Piece(request, right_item)]) or wrote

    def _settle(
        self,
        piece: _Piece,
        *,
        written: int = 0,
        rejected: int = 0,
        reason: str | None = None,
        failure: BaseException | None = None,
    ) -> None:
        request = piece.request
        with self._settle_lock:
            request.written += written
            if rejected:
                item = request.item
                item.rejected += rejected
                if reason and len(item.errors) < _ERRORS_KEPT:
                    item.errors.append(reason)
            if failure is not None and request.failure is None:
                request.failure = failure
            request.pieces -= 1
            done = request.pieces == 0
        if not done:
            return
        with self._cond:
            self._pending_bytes -= request.nbytes
        if request.failure is not None:
            request.future.set_exception(request.failure)
        else:
            request.future.set_result(request.written)

    def _insert(self, items: Sequence[Batchable]) -> None:
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


def _halves(pieces: list[_Piece]) -> tuple[list[_Piece], list[_Piece]]:
    """``pieces`` cut in two runs of about the same number of spans (neither empty)."""
    total = sum(len(piece.item) for piece in pieces)
    running = 0
    for cut, piece in enumerate(pieces[:-1], start=1):
        running += len(piece.item)
        if running * 2 >= total:
            return pieces[:cut], pieces[cut:]
    return pieces[:-1], pieces[-1:]


def _days_per_insert(store: Store) -> int:
    """Distinct UTC days one insert's spans may start on: half the partition limit."""
    try:
        _, [(limit,)] = store.query("SELECT getSetting('max_partitions_per_insert_block')")
        limit = int(limit)
    except Exception:  # an engine without the setting: its documented default
        logger.debug("cannot read max_partitions_per_insert_block", exc_info=True)
        limit = 100
    if limit <= 0:  # no limit
        return 1 << 62
    return max(limit // 2, 1)
