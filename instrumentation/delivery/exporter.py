"""OTLP/HTTP span exporter for usage: retries, then spools; never drops usage silently.

Contract: ``export`` encodes the batch once (OTLP protobuf) and POSTs it to the endpoint.
Connection errors and the OTLP retryable statuses (429, 502, 503, 504, honouring
``Retry-After``) are retried with backoff for up to ``retry_seconds``; any other non-2xx
but 400 (the collector rejected the data: re-sending cannot help) and an exhausted retry
budget put the batch in the :class:`~.spool.Spool`. During shutdown there is one attempt
and no waiting, so an app exits promptly when the collector is down. After a successful
export, and once at start-up (in a daemon thread), the spool is flushed.

Endpoint, first found: ``METERLINE_OTLP_ENDPOINT`` (base URL), the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (full URL) / ``OTEL_EXPORTER_OTLP_ENDPOINT`` (base),
else a local meterline, ``http://127.0.0.1:4318``. This exporter speaks OTLP/HTTP only:
with ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` a ``:4317`` endpoint is mapped to ``:4318``.
Headers from ``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from meterline.instrumentation.delivery.spool import Spool

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
ENV_ENDPOINT = "METERLINE_OTLP_ENDPOINT"
ENV_RETRY_SECONDS = "METERLINE_EXPORT_RETRY_SECONDS"
_RETRYABLE = frozenset({429, 502, 503, 504})
_TRACES_PATH = "/v1/traces"


def resolve_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The traces URL usage is sent to (see the module docstring)."""
    env = os.environ if environ is None else environ
    base = env.get(ENV_ENDPOINT)
    if base:
        url = base if urllib.parse.urlsplit(base).path.rstrip("/") else _join(base)
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        url = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        url = _join(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    else:
        return _join(DEFAULT_ENDPOINT)
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", ""
    )
    parts = urllib.parse.urlsplit(url)
    if protocol.strip().lower() == "grpc" and parts.port == 4317:
        url = parts._replace(netloc=parts.netloc.replace(":4317", ":4318")).geturl()
        if not parts.path.rstrip("/"):
            url = _join(url)
    return url


def _join(base: str) -> str:
    return base.rstrip("/") + _TRACES_PATH


def resolve_headers(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers from ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` or ``OTEL_EXPORTER_OTLP_HEADERS``."""
    env = os.environ if environ is None else environ
    raw = env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS")
    headers: dict[str, str] = {}
    for item in (raw or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return headers


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
        self.endpoint = endpoint or resolve_endpoint()
        self._headers = {"Content-Type": "application/x-protobuf", **resolve_headers()}
        if headers:
            self._headers.update(headers)
        self._timeout = timeout
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
            payload = encode_spans(spans).SerializePartialToString()
        except Exception:
            logger.warning("meterline: could not encode %d spans", len(spans), exc_info=True)
            return SpanExportResult.FAILURE
        status = self._send(payload, retry=not self._stopping.is_set())
        if status is not None and 200 <= status < 300:
            if self.spool.has_pending():
                self.flush_spool()
            return SpanExportResult.SUCCESS
        if status == 400:
            logger.warning("meterline: the collector rejected %d spans (400)", len(spans))
            return SpanExportResult.FAILURE
        if self.spool.put(payload) is not None:
            logger.info(
                "meterline: collector unreachable (%s), %d spans spooled to %s",
                status,
                len(spans),
                self.spool.directory,
            )
            return SpanExportResult.SUCCESS
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._stopping.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # -- sending ----------------------------------------------------------------------

    def flush_spool(self) -> tuple[int, int]:
        """Deliver spooled batches now; returns ``(sent, remaining)``."""
        with self._flush_lock:
            return self.spool.flush(self.post)

    def post(self, payload: bytes) -> bool:
        """One POST of an encoded request; True when acknowledged with a 2xx."""
        status, _ = self._post_once(payload)
        return status is not None and 200 <= status < 300

    def _send(self, payload: bytes, *, retry: bool) -> int | None:
        deadline = time.monotonic() + self._retry_seconds
        delay = 0.25
        while True:
            status, retry_after = self._post_once(payload)
            if status is not None and status not in _RETRYABLE:
                return status
            if not retry or self._stopping.is_set():
                return status
            wait = retry_after if retry_after is not None else delay
            if time.monotonic() + wait > deadline:
                return status
            if self._stopping.wait(wait):
                return status
            delay = min(delay * 2, 4.0)

    def _post_once(self, payload: bytes) -> tuple[int | None, float | None]:
        request = urllib.request.Request(
            self.endpoint, data=payload, headers=self._headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
                return response.status, None
        except urllib.error.HTTPError as exc:
            retry_after = None
            value = exc.headers.get("Retry-After") if exc.headers else None
            if value:
                try:
                    retry_after = min(float(value), 30.0)
                except ValueError:
                    retry_after = None
            return exc.code, retry_after
        except (OSError, ValueError):
            logger.debug("meterline: export to %s failed", self.endpoint, exc_info=True)
            return None, None
