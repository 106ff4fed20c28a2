"""``MeterlineSpanExporter``: an OTLP/HTTP span exporter that retries, then spools.

For apps that wire their own ``BatchSpanProcessor``. meterline's own pipeline uses
:class:`~.processor.SpoolingSpanProcessor` instead, which writes each span to disk as it
ends; with a batch processor, spans wait in its memory (5 s by default) and are lost if the
process is killed meanwhile.

Contract: ``export`` encodes the batch once (OTLP protobuf) and POSTs it (:mod:`.sender`).
Transient failures (no answer, 429/502/503/504 with ``Retry-After``) are retried with
backoff for up to ``retry_seconds`` (``METERLINE_EXPORT_RETRY_SECONDS``, default 5);
then, or on any other failure, the batch goes to the :class:`~.spool.Spool`. A batch the
collector refuses as malformed (400/413) is logged as an error and kept aside in the spool
(``….rejected``), never resent; a ``partial_success`` is logged and not resent. During
shutdown there is one attempt and no waiting. After a successful export, and once at
start-up (in a daemon thread), the spool is flushed.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from meterline.instrumentation.delivery.flush import FlushReport, flush_spool
from meterline.instrumentation.delivery.sender import (
    OtlpHttpSender,
    Outcome,
    Status,
    resolve_endpoint,
    resolve_headers,
)
from meterline.instrumentation.delivery.spool import Spool

logger = logging.getLogger(__name__)

ENV_RETRY_SECONDS = "METERLINE_EXPORT_RETRY_SECONDS"

__all__ = ["MeterlineSpanExporter", "resolve_endpoint", "resolve_headers"]


class MeterlineSpanExporter(SpanExporter):
    """Exports spans over OTLP/HTTP with retry and an on-disk spool."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        retry_seconds: float | None = None,
        spool: Spool | None = None,
        flush_on_start: bool = True,
    ) -> None:
        self._sender = OtlpHttpSender(endpoint, headers=headers, timeout=timeout)
        self.endpoint = self._sender.endpoint
        if retry_seconds is None:
            try:
                retry_seconds = float(os.environ.get(ENV_RETRY_SECONDS, "5"))
            except ValueError:
                retry_seconds = 5.0
        self._retry_seconds = retry_seconds
        self.spool = spool if spool is not None else Spool()
        self._stopping = threading.Event()
        self._flush_lock = threading.Lock()
        # Registered after the tracer provider's own exit hook, so it runs first: the final
        # flush at exit makes one attempt and spools instead of waiting on a dead collector.
        atexit.register(self._stopping.set)
        if flush_on_start and self.spool.has_pending():
            threading.Thread(
                target=self.flush_spool, name="meterline-spool-flush", daemon=True
            ).start()

    # -- SpanExporter ---------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            payload = encode_spans(spans).SerializeToString()
        except Exception:
            logger.warning("meterline: could not encode %d spans", len(spans), exc_info=True)
            return SpanExportResult.FAILURE
        outcome = self._send(payload, retry=not self._stopping.is_set())
        if outcome.acked:
            if outcome.rejected_spans:
                logger.warning(
                    "meterline: the collector stored %d span(s) but rejected %d as invalid "
                    "(not resent): %s",
                    len(spans) - outcome.rejected_spans,
                    outcome.rejected_spans,
                    outcome.message or "no reason given",
                )
            if self.spool.has_pending():
                self.flush_spool()
            return SpanExportResult.SUCCESS
        if outcome.status is Status.REJECTED:
            kept = self.spool.write(payload, rejected=True)
            logger.error(
                "meterline: the collector at %s refused %d spans (%s); kept as %s, not resent",
                self.endpoint,
                len(spans),
                outcome.describe(),
                kept,
            )
            return SpanExportResult.FAILURE
        if self.spool.write(payload) is not None:
            logger.info(
                "meterline: cannot deliver to %s (%s), %d spans spooled to %s",
                self.endpoint,
                outcome.describe(),
                len(spans),
                self.spool.directory,
            )
            return SpanExportResult.SUCCESS
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._stopping.set()
        self._sender.close()
        self.spool.seal(lock_timeout=1.0)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # -- sending ----------------------------------------------------------------------

    def flush_spool(self) -> tuple[int, int]:
        """Deliver spooled batches now; returns ``(sent, remaining)`` file counts."""
        report = self.flush()
        return report.sent_files, report.remaining

    def flush(self, *, deadline: float | None = None) -> FlushReport:
        """Deliver spooled batches now (see :func:`~.flush.flush_spool`)."""
        with self._flush_lock:
            return flush_spool(self.spool, self._sender, deadline=deadline)

    def post(self, payload: bytes) -> bool:
        """One POST of an encoded request; True when acknowledged with a 2xx."""
        return self._sender.post(payload).acked

    def _send(self, payload: bytes, *, retry: bool) -> Outcome:
        deadline = time.monotonic() + self._retry_seconds
        delay = 0.25
        while True:
            outcome = self._sender.post(payload)
            if not outcome.retryable or not retry or self._stopping.is_set():
                return outcome
            wait = outcome.retry_after if outcome.retry_after is not None else delay
            if time.monotonic() + wait > deadline:
                return outcome
            if self._stopping.wait(wait):
                return outcome
            delay = min(delay * 2, 4.0)
