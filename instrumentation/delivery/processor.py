"""``SpoolingSpanProcessor``: every ended span on local disk within ~25 ms, delivered from there.

Contract:

* ``on_end`` (the app's thread) only puts the span in an in-memory queue (a C
  ``SimpleQueue``: no lock, no I/O, no encoding) and wakes the writer when it was idle —
  at most one wake-up per write, not one per call.
* The *writer* thread writes at most every ``write_interval`` (default 25 ms,
  ``METERLINE_SPOOL_WRITE_INTERVAL_MS``): it drains the queue, OTLP-encodes up to 512
  spans per request and appends each request to the :class:`~.spool.Spool`'s open
  segment (one ``write``; page cache, fsync with ``METERLINE_SPOOL_FSYNC=1``). A span is
  therefore on disk within ``write_interval`` plus one write after it ends, the first
  after a quiet spell at once.
* The *sender* thread delivers the spool's whole queue (files of earlier runs and of other
  processes sharing the directory included) at most every ``export_interval`` (default
  1 s, ``METERLINE_EXPORT_INTERVAL_MS``), deleting each file only once the collector
  acknowledged it (:mod:`.flush`); after a failure it backs off from 1 s to 60 s
  (``Retry-After`` honoured). Files are left for the next start, ``force_flush`` or
  ``meterline spool flush`` otherwise.
* ``shutdown`` (the provider's, at interpreter exit), ``force_flush`` and the stop signals
  (:mod:`.signals`) write what is in memory, then deliver for at most
  ``shutdown_timeout`` (default 2 s, ``METERLINE_SHUTDOWN_TIMEOUT_SECONDS``); what is not
  delivered by then stays on disk.
* Only sampled spans are kept, as the SDK's batch processor does (usage spans always are).

Known limits: a span still in memory when the process is killed (kill -9 or ``os._exit``
within ``write_interval`` of its end) is lost; when the spool cannot be written (disk full,
read-only), batches wait in memory (bounded, a warning) and are sent from there.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Mapping, Sequence

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from meterline.instrumentation.delivery.flush import FlushReport, flush_spool
from meterline.instrumentation.delivery.sender import OtlpHttpSender, is_config_error
from meterline.instrumentation.delivery.spool import Spool

logger = logging.getLogger(__name__)

ENV_WRITE_INTERVAL_MS = "METERLINE_SPOOL_WRITE_INTERVAL_MS"
ENV_EXPORT_INTERVAL_MS = "METERLINE_EXPORT_INTERVAL_MS"
ENV_SHUTDOWN_TIMEOUT = "METERLINE_SHUTDOWN_TIMEOUT_SECONDS"
MAX_SPANS_PER_FILE = 512
MAX_QUEUED_SPANS = 100_000
MAX_UNSPOOLED = 64
_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 60.0


def _env_float(name: str, default: float, scale: float = 1.0) -> float:
    try:
        value = float(os.environ[name]) * scale
    except (KeyError, ValueError):
        return default
    return value if value >= 0 else default


class SpoolingSpanProcessor(SpanProcessor):
    """Write-ahead span processor: memory → spool file → collector (see the module doc)."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        spool: Spool | None = None,
        write_interval: float | None = None,
        export_interval: float | None = None,
        shutdown_timeout: float | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.spool = spool if spool is not None else Spool()
        self._headers = dict(headers or {})
        self._sender = OtlpHttpSender(endpoint, headers=headers, timeout=timeout)
        # A second sender (its own connection) for a signal handler or exit hook that may
        # have interrupted the thread using the first.
        self._urgent_sender = OtlpHttpSender(
            self._sender.endpoint, headers=headers, timeout=timeout
        )
        self.endpoint = self._sender.endpoint
        self._write_interval = (
            write_interval
            if write_interval is not None
            else _env_float(ENV_WRITE_INTERVAL_MS, 0.025, 0.001)
        )
        self._export_interval = (
            export_interval
            if export_interval is not None
            else _env_float(ENV_EXPORT_INTERVAL_MS, 1.0, 0.001)
        )
        self._shutdown_timeout = (
            shutdown_timeout
            if shutdown_timeout is not None
            else _env_float(ENV_SHUTDOWN_TIMEOUT, 2.0)
        )
        self._is_shutdown = False
        self._closed = False
        self.dropped = 0
        self._reset()
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._after_fork_in_child)
            os.register_at_fork(after_in_child=lambda: (m := ref()) and m())
        if self.spool.has_pending():  # left by an earlier run: deliver it now
            self._start()
            self.wake_sender()

    def _reset(self) -> None:
        self._spans: queue.SimpleQueue[ReadableSpan] = queue.SimpleQueue()
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._send_wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._persist_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._unspooled: collections.deque[bytes] = collections.deque()
        self._armed = False
        self._started = False
        self._posting = False
        self._send_due = False
        self._last_write = 0.0
        self._failing = False
        self._writer: threading.Thread | None = None
        self._sending: threading.Thread | None = None

    # -- SpanProcessor ------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self._is_shutdown or not span.context.trace_flags.sampled:
            return
        spans = self._spans
        if spans.qsize() >= MAX_QUEUED_SPANS:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                logger.error(
                    "meterline: %d spans dropped: %d are waiting to be written to the spool %s",
                    self.dropped,
                    MAX_QUEUED_SPANS,
                    self.spool.directory,
                )
            return
        spans.put(span)
        if not self._armed:
            self._armed = True
            if not self._started:
                self._start()
            self._wake.put(None)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Write what is in memory, then deliver; True if nothing is left undelivered."""
        deadline = time.monotonic() + timeout_millis / 1000
        self.persist()
        report = self.deliver_now(deadline)
        return report is not None and report.failure is None and not report.remaining

    def shutdown(self) -> None:
        """Write what is in memory, deliver for at most ``shutdown_timeout``, stop."""
        if self._is_shutdown:
            return
        deadline = time.monotonic() + self._shutdown_timeout
        self.persist()
        self._is_shutdown = True
        self._closed = True
        self.persist()  # spans that ended while the first write ran
        self._wake.put(None)
        self._send_wake.put(None)
        sending = self._sending
        if sending is not None and sending is not threading.current_thread():
            sending.join(max(0.0, deadline - time.monotonic()))
        report = self.deliver_now(deadline)
        if report is not None and (report.failure is not None or report.remaining):
            logger.warning(
                "meterline: %d batch(es) of usage not delivered at exit (%s); kept in %s for "
                "the next start or `meterline spool flush`",
                report.remaining,
                report.failure.describe() if report.failure else "out of time",
                self.spool.directory,
            )
        if sending is None or not sending.is_alive():
            self.spool.close()
        self._sender.close()
        self._urgent_sender.close()

    # -- for the signal handlers and the exit hook --------------------------------------

    def persist(self, *, lock_timeout: float = 1.0) -> None:
        """Write every span in memory to the spool now (in the calling thread).

        Waits at most ``lock_timeout`` for a write in progress; a signal handler may have
        interrupted that very write, so it then writes without the lock (the queue hands
        each span to one taker only).
        """
        locked = self._persist_lock.acquire(timeout=lock_timeout)
        try:
            self._armed = False
            self._persist_locked(lock_timeout)
        finally:
            if locked:
                self._persist_lock.release()

    def deliver_now(self, deadline: float, *, lock_timeout: float = 1.0) -> FlushReport | None:
        """Deliver the spool until ``deadline`` in the calling thread (after the sender's
        POST in flight, if any, finished); None if in-memory batches could not be sent."""
        while self._posting and time.monotonic() < deadline:
            time.sleep(0.005)
        if not self._deliver_unspooled(deadline):
            return None
        return flush_spool(
            self.spool, self._urgent_sender, deadline=deadline, lock_timeout=lock_timeout
        )

    def wake_sender(self) -> None:
        """Ask the sender thread to deliver (signal-safe); one wake-up until it has."""
        if not self._send_due:
            self._send_due = True
            self._send_wake.put(None)

    @property
    def shutdown_timeout(self) -> float:
        return self._shutdown_timeout

    # -- the threads --------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._started or self._closed:
                return
            self._writer = threading.Thread(
                target=self._write_loop, name="meterline-spool-writer", daemon=True
            )
            self._sending = threading.Thread(
                target=self._send_loop, name="meterline-spool-sender", daemon=True
            )
            self._writer.start()
            self._sending.start()
            self._started = True

    def _write_loop(self) -> None:
        while not self._closed:
            self._wake.get()
            if self._closed:
                break
            delay = self._last_write + self._write_interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                self.persist(lock_timeout=-1)
            except Exception:  # never let the writer die
                logger.warning("meterline: spool writer failed", exc_info=True)
            self._last_write = time.monotonic()
            self.wake_sender()

    def _send_loop(self) -> None:
        next_at = 0.0
        backoff = _BACKOFF_FIRST
        while not self._closed:
            if self._send_due and time.monotonic() >= next_at:
                self._send_due = False  # before sealing: records written after it wake us
                self._posting = True
                report: FlushReport | None = None
                try:
                    if self._deliver_unspooled(None):
                        report = flush_spool(self.spool, self._sender)
                except Exception:
                    logger.warning("meterline: delivering the spool failed", exc_info=True)
                finally:
                    self._posting = False
                ok = report is not None and report.failure is None
                self._note(report, ok)
                if ok:
                    backoff = _BACKOFF_FIRST
                    next_at = time.monotonic() + self._export_interval
                else:
                    self._send_due = True
                    failure = report.failure if report else None
                    wait = failure.retry_after if failure and failure.retry_after else backoff
                    next_at = time.monotonic() + wait
                    backoff = min(backoff * 2, _BACKOFF_MAX)
            timeout = max(0.0, next_at - time.monotonic()) if self._send_due else None
            with contextlib.suppress(queue.Empty):
                self._send_wake.get(timeout=timeout)

    def _note(self, report: FlushReport | None, ok: bool) -> None:
        """Log state changes, not every attempt."""
        if ok:
            if self._failing:
                self._failing = False
                logger.warning(
                    "meterline: the collector at %s answers again; spooled usage delivered",
                    self.endpoint,
                )
            return
        if self._failing:
            return
        self._failing = True
        failure = report.failure if report else None
        what = failure.describe() if failure else "the spool could not be read"
        if failure is not None and is_config_error(failure):
            logger.error(
                "meterline: the collector at %s refuses usage (%s): check the endpoint and "
                "token; usage is kept in %s and retried",
                self.endpoint,
                what,
                self.spool.directory,
            )
        else:
            logger.warning(
                "meterline: cannot deliver usage to %s (%s); it is kept in %s and retried",
                self.endpoint,
                what,
                self.spool.directory,
            )

    # -- internals ----------------------------------------------------------------------

    def _persist_locked(self, lock_timeout: float) -> None:
        batch: list[ReadableSpan] = []
        spans = self._spans
        while True:
            try:
                batch.append(spans.get_nowait())
            except queue.Empty:
                break
            if len(batch) >= MAX_SPANS_PER_FILE:
                self._write(batch, lock_timeout)
                batch = []
        if batch:
            self._write(batch, lock_timeout)

    def _write(self, spans: Sequence[ReadableSpan], lock_timeout: float = -1) -> None:
        try:
            payload = encode_spans(spans).SerializeToString()
        except Exception:
            logger.warning("meterline: could not encode %d spans", len(spans), exc_info=True)
            return
        if self.spool.write(payload, lock_timeout=lock_timeout) is not None:
            return
        if len(self._unspooled) >= MAX_UNSPOOLED:
            self._unspooled.popleft()
            logger.error(
                "meterline: the spool %s cannot be written and %d batches wait in memory: "
                "dropped the oldest",
                self.spool.directory,
                MAX_UNSPOOLED,
            )
        self._unspooled.append(payload)

    def _deliver_unspooled(self, deadline: float | None) -> bool:
        """Send batches the spool could not take; True when none are left."""
        while self._unspooled:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                payload = self._unspooled.popleft()
            except IndexError:
                break
            sender = self._sender if deadline is None else self._urgent_sender
            outcome = sender.post(payload, timeout=left)
            if not outcome.acked and outcome.retryable:
                self._unspooled.appendleft(payload)
                return False
        return True

    def _after_fork_in_child(self) -> None:
        """The parent's threads are gone and its queued spans are the parent's to write."""
        self._reset()
        timeout = self._sender.timeout
        self._sender = OtlpHttpSender(self.endpoint, headers=self._headers, timeout=timeout)
        self._urgent_sender = OtlpHttpSender(self.endpoint, headers=self._headers, timeout=timeout)
        self.spool._room = threading.Lock()
