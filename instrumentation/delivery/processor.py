"""``SpoolingSpanProcessor``: every ended span on local disk before its call returns.

Contract:

* ``on_end`` (on the app's thread, as the span ends) makes the span's record
  (:mod:`.records`: ~12 µs of JSON, no OTLP encoding) and appends it to the
  :class:`~.spool.Spool`'s open segment with one ``write`` (page cache; fsync with
  ``METERLINE_SPOOL_FSYNC=1``). So a finished call's usage is on disk before the call
  returns to the app: no window in memory, no thread woken per call. (Appending to a file
  the process holds open costs a few µs; the SDK's own call costs ~1–3 ms.)
* The *sender* thread delivers the spool's whole queue (files of earlier runs and of other
  processes sharing the directory included): at once after a quiet spell, then at most
  every ``export_interval`` (default 5 s, as the SDK's batch processor;
  ``METERLINE_EXPORT_INTERVAL_MS``), deleting each file only once the collector
  acknowledged it (:mod:`.flush`, which OTLP-encodes the records of a POST together).
  After a failure it backs off from 1 s to 60 s (``Retry-After`` honoured). Files are left
  for the next start, ``force_flush`` or ``meterline spool flush`` otherwise.
* ``shutdown`` (the provider's, at interpreter exit), ``force_flush`` and the stop signals
  (:mod:`.signals`) deliver for at most ``shutdown_timeout`` (default 2 s,
  ``METERLINE_SHUTDOWN_TIMEOUT_SECONDS``); what is not delivered by then stays on disk.
* Only sampled spans are kept, as the SDK's batch processor does (usage spans always are).

Known limits: when the spool cannot be written (disk full, read-only) or its lock is not
had in time (a signal handler that interrupted a write), records wait in memory (bounded,
an error logged) and are sent from there; under heavy dirty-page writeback the kernel may
make the app's thread wait in ``write``, as it would for any file it logs to.
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
from collections.abc import Mapping

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from meterline.instrumentation.delivery import signals
from meterline.instrumentation.delivery.flush import FlushReport, flush_spool
from meterline.instrumentation.delivery.records import encode_records, span_record
from meterline.instrumentation.delivery.sender import OtlpHttpSender, is_config_error
from meterline.instrumentation.delivery.spool import Spool

logger = logging.getLogger(__name__)

ENV_EXPORT_INTERVAL_MS = "METERLINE_EXPORT_INTERVAL_MS"
ENV_SHUTDOWN_TIMEOUT = "METERLINE_SHUTDOWN_TIMEOUT_SECONDS"
MAX_IN_MEMORY = 10_000
_LOCK_TIMEOUT = 1.0
_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 60.0


def _env_float(name: str, default: float, scale: float = 1.0) -> float:
    try:
        value = float(os.environ[name]) * scale
    except (KeyError, ValueError):
        return default
    return value if value >= 0 else default


class SpoolingSpanProcessor(SpanProcessor):
    """Write-ahead span processor: span → spool file → collector (see the module doc)."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        spool: Spool | None = None,
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
        self._export_interval = (
            export_interval
            if export_interval is not None
            else _env_float(ENV_EXPORT_INTERVAL_MS, 5.0, 0.001)
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
        self._send_wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._in_memory: collections.deque[bytes] = collections.deque()
        self._memory_lock = threading.Lock()
        self._started = False
        self._posting = False
        self._send_due = False
        self._failing = False
        self._sending: threading.Thread | None = None

    # -- SpanProcessor ------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self._is_shutdown or not span.context.trace_flags.sampled:
            return
        try:
            record = span_record(span)
        except Exception:
            logger.warning("meterline: could not record span %r", span.name, exc_info=True)
            return
        # A signal handler may have interrupted this very thread inside a write: never
        # wait for the lock there (the record then waits in memory for the handler).
        timeout = 0.0 if signals.handling() else _LOCK_TIMEOUT
        if self.spool.write_many([record], lock_timeout=timeout) is None:
            self._keep_in_memory(record)
        if not self._started:
            self._start()
        self.wake_sender()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Deliver now; True if nothing is left undelivered."""
        report = self.deliver_now(time.monotonic() + timeout_millis / 1000)
        return report is not None and report.failure is None and not report.remaining

    def shutdown(self) -> None:
        """Deliver for at most ``shutdown_timeout``, then stop."""
        if self._is_shutdown:
            return
        deadline = time.monotonic() + self._shutdown_timeout
        self._is_shutdown = True
        self._closed = True
        self._send_wake.put(None)
        sending = self._sending
        if sending is not None and sending is not threading.current_thread():
            sending.join(max(0.0, deadline - time.monotonic()))
        report = self.deliver_now(deadline)
        if report is None or report.failure is not None or report.remaining:
            logger.warning(
                "meterline: %s batch(es) of usage not delivered at exit (%s); kept in %s for "
                "the next start or `meterline spool flush`",
                report.remaining if report is not None else "some",
                report.failure.describe() if report and report.failure else "out of time",
                self.spool.directory,
            )
        if sending is None or not sending.is_alive():
            self.spool.close()
        self._sender.close()
        self._urgent_sender.close()

    # -- for the signal handlers and the exit hook --------------------------------------

    def persist(self, *, lock_timeout: float = 1.0) -> None:
        """Write records that wait in memory (the spool was unwritable or busy) to disk."""
        if not self._in_memory or not self._memory_lock.acquire(timeout=lock_timeout):
            return
        try:
            pending = list(self._in_memory)
            if self.spool.write_many(pending, lock_timeout=lock_timeout) is not None:
                for _ in pending:
                    self._in_memory.popleft()
        finally:
            self._memory_lock.release()

    def deliver_now(self, deadline: float, *, lock_timeout: float = 1.0) -> FlushReport | None:
        """Deliver the spool until ``deadline`` in the calling thread (after the sender's
        POST in flight, if any, finished); None if records in memory could not be sent."""
        self.persist(lock_timeout=lock_timeout)
        while self._posting and time.monotonic() < deadline:
            time.sleep(0.005)
        if not self._deliver_in_memory(deadline, lock_timeout=lock_timeout):
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

    # -- the sender thread --------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._started or self._closed:
                return
            self._sending = threading.Thread(
                target=self._send_loop, name="meterline-spool-sender", daemon=True
            )
            self._sending.start()
            self._started = True

    def _send_loop(self) -> None:
        next_at = 0.0
        backoff = _BACKOFF_FIRST
        while not self._closed:
            # Records in memory survive no crash: after a good POST they go at once instead
            # of waiting for the batching interval (a failing collector still backs off).
            if self._in_memory and backoff == _BACKOFF_FIRST:
                next_at = min(next_at, time.monotonic())
            if self._send_due and time.monotonic() >= next_at:
                self._send_due = False  # before sealing: records written after it wake us
                self._posting = True
                report: FlushReport | None = None
                try:
                    self.persist()
                    if self._deliver_in_memory(None):
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

    def _keep_in_memory(self, record: bytes) -> None:
        if len(self._in_memory) >= MAX_IN_MEMORY:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.error(
                    "meterline: the spool %s cannot be written and %d spans wait in memory: "
                    "%d dropped",
                    self.spool.directory,
                    MAX_IN_MEMORY,
                    self.dropped,
                )
            return
        self._in_memory.append(record)

    def _deliver_in_memory(self, deadline: float | None, *, lock_timeout: float = -1) -> bool:
        """Send records the spool could not take; True when none are left."""
        if not self._in_memory:
            return True
        if not self._memory_lock.acquire(timeout=lock_timeout):
            return False
        try:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            pending = list(self._in_memory)
            try:
                payload = encode_records(pending)
            except Exception:
                logger.warning("meterline: could not encode %d spans", len(pending), exc_info=True)
                self._in_memory.clear()
                return True
            sender = self._sender if deadline is None else self._urgent_sender
            outcome = sender.post(payload, timeout=left)
            if not outcome.acked and outcome.retryable:
                return False
            if not outcome.acked:
                logger.error(
                    "meterline: the collector at %s refused %d spans (%s); the spool cannot "
                    "be written, so they are not kept",
                    self.endpoint,
                    len(pending),
                    outcome.describe(),
                )
            for _ in pending:
                self._in_memory.popleft()
            return True
        finally:
            self._memory_lock.release()

    def _after_fork_in_child(self) -> None:
        """The parent's thread is gone; what it keeps in memory is the parent's to send."""
        self._reset()
        timeout = self._sender.timeout
        self._sender = OtlpHttpSender(self.endpoint, headers=self._headers, timeout=timeout)
        self._urgent_sender = OtlpHttpSender(self.endpoint, headers=self._headers, timeout=timeout)
        self.spool._room = threading.Lock()
