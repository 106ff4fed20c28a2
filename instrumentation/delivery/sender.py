"""One OTLP/HTTP POST of an encoded ``ExportTraceServiceRequest``, and what its answer means.

Contract: :meth:`OtlpHttpSender.post` never raises; it returns an :class:`Outcome`:

* ``ACKED`` — a 2xx: the collector stored the spans. A ``partial_success`` in the answer
  (spans it rejected as invalid, the rest stored) is read and logged with the rejected
  count and message; the request is *not* resent (resending cannot fix invalid spans).
* ``REJECTED`` — 400 or 413: the collector says these bytes can never be taken. Resending
  them cannot help; the caller keeps them aside (the spool's ``.rejected`` files), and the
  collector's message is logged as an error.
* ``FAILED`` — anything else: unreachable, a timeout, the OTLP retryable statuses (429,
  502, 503, 504; ``retry_after`` from ``Retry-After``), other 5xx, and the configuration
  errors 401/403/404/405/415 (logged as errors: a person must fix the token or endpoint).
  The caller keeps the data and tries again later. So does an endpoint that is not an
  http(s) URL (``invalid``): usage is kept until the configuration is fixed.

The connection is kept alive, one per thread (``http.client`` is not thread-safe); a
reused connection the server closed while idle is retried once on a fresh one. Endpoint,
headers and CA file follow the OTel exporter variables (see :func:`resolve_endpoint`).
Only OTLP/HTTP protobuf is spoken.
"""

from __future__ import annotations

import enum
import http.client
import json
import logging
import os
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
ENV_ENDPOINT = "METERLINE_OTLP_ENDPOINT"
_TRACES_PATH = "/v1/traces"
_RETRYABLE = frozenset({429, 502, 503, 504})
_REJECTED = frozenset({400, 413})
_CONFIG_ERRORS = frozenset({401, 403, 404, 405, 415})


class Status(enum.Enum):
    ACKED = "acked"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """What one POST came to."""

    status: Status
    http_status: int | None = None
    """The HTTP status, None when no answer came (connection refused, timeout)."""
    rejected_spans: int = 0
    """Spans the collector refused inside an acknowledged request (``partial_success``)."""
    message: str = ""
    """The collector's error or partial-success message, or the connection error."""
    retry_after: float | None = None
    """Seconds the collector asked to wait (``Retry-After``), capped at 60."""

    @property
    def acked(self) -> bool:
        return self.status is Status.ACKED

    @property
    def retryable(self) -> bool:
        """True for a transient failure (no answer, or an OTLP retryable status)."""
        return self.status is Status.FAILED and (
            self.http_status is None or self.http_status in _RETRYABLE
        )

    def describe(self) -> str:
        if self.http_status is None:
            return f"no answer ({self.message})"
        return f"{self.http_status}" + (f": {self.message}" if self.message else "")


def resolve_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The traces URL usage is sent to.

    First found: ``METERLINE_OTLP_ENDPOINT`` (base URL, or a full URL with a path),
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (full URL), ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (base), else a local meterline, ``http://127.0.0.1:4318``. With
    ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` a ``:4317`` endpoint is mapped to ``:4318``.
    """
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


def traces_url(base: str) -> str:
    """The traces URL of an OTLP/HTTP base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` is read
    (``http://host:4318`` → ``http://host:4318/v1/traces``; a base path is kept:
    ``http://host/otlp`` → ``…/otlp/v1/traces``). A URL already ending in ``/v1/traces`` is
    taken as it is."""
    parts = urllib.parse.urlsplit(base)
    if parts.path.rstrip("/").endswith(_TRACES_PATH):
        return base
    return parts._replace(path=parts.path.rstrip("/") + _TRACES_PATH).geturl()


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


class OtlpHttpSender:
    """POSTs encoded requests to one OTLP/HTTP traces endpoint (see the module docstring)."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint or resolve_endpoint()
        parts = urllib.parse.urlsplit(self.endpoint)
        self.invalid: str | None = None
        """Why the endpoint cannot be used (every POST then fails with it), else None."""
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.invalid = f"{self.endpoint!r} is not an http(s) OTLP endpoint URL"
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or _TRACES_PATH) + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/x-protobuf", **resolve_headers()}
        if headers:
            self._headers.update(headers)
        self.timeout = timeout
        self._local = threading.local()
        self._ssl: ssl.SSLContext | None = None

    def post(self, payload: bytes, *, timeout: float | None = None) -> Outcome:
        """One POST (plus one retry on a stale kept-alive connection); never raises."""
        if self.invalid is not None:
            return Outcome(Status.FAILED, message=self.invalid)
        wait = self.timeout if timeout is None else max(0.05, min(timeout, self.timeout))
        for attempt in (0, 1):
            conn, reused = self._connection(wait)
            try:
                conn.request("POST", self._path, body=payload, headers=self._headers)
                response = conn.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop()
                if reused and attempt == 0:
                    continue  # the server closed an idle connection: once more, fresh
                return Outcome(Status.FAILED, message=_error_text(exc))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._drop()
                return Outcome(Status.FAILED, message=_error_text(exc))
            if response.getheader("Connection", "").lower() == "close":
                self._drop()
            return self._outcome(response, body)
        return Outcome(Status.FAILED, message="connection closed")  # pragma: no cover

    def close(self) -> None:
        self._drop()

    # -- internals ----------------------------------------------------------------------

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl_context()
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        self._local.conn = conn
        return conn, False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            cafile = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE") or os.environ.get(
                "OTEL_EXPORTER_OTLP_CERTIFICATE"
            )
            self._ssl = ssl.create_default_context(cafile=cafile or None)
        return self._ssl

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    @staticmethod
    def _outcome(response: http.client.HTTPResponse, body: bytes) -> Outcome:
        status = response.status
        content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if 200 <= status < 300:
            rejected, message = _partial_success(body, content_type)
            return Outcome(Status.ACKED, status, rejected_spans=rejected, message=message)
        message = _status_message(body, content_type)
        if status in _REJECTED:
            return Outcome(Status.REJECTED, status, message=message)
        retry_after = None
        value = response.getheader("Retry-After")
        if value:
            try:
                retry_after = min(max(float(value), 0.0), 60.0)
            except ValueError:
                retry_after = None
        return Outcome(Status.FAILED, status, message=message, retry_after=retry_after)


def is_config_error(outcome: Outcome) -> bool:
    """True for answers a person must fix (token, endpoint, content type)."""
    return outcome.http_status in _CONFIG_ERRORS or "OTLP endpoint URL" in outcome.message


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _partial_success(body: bytes, content_type: str) -> tuple[int, str]:
    """``(rejected_spans, error_message)`` of an ``ExportTraceServiceResponse``."""
    if not body:
        return 0, ""
    try:
        if content_type == "application/json":
            data = json.loads(body).get("partialSuccess") or {}
            return int(data.get("rejectedSpans") or 0), str(data.get("errorMessage") or "")
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        response = ExportTraceServiceResponse.FromString(body)
        partial = response.partial_success
        return int(partial.rejected_spans), partial.error_message
    except Exception:
        logger.debug("meterline: unreadable OTLP response body", exc_info=True)
        return 0, ""


def _status_message(body: bytes, content_type: str) -> str:
    """The message of a ``google.rpc.Status`` error body (protobuf or JSON), else its text."""
    if not body:
        return ""
    try:
        if content_type == "application/json":
            return str(json.loads(body).get("message") or "")[:500]
        if content_type == "application/x-protobuf":
            from google.rpc import status_pb2

            return status_pb2.Status.FromString(body).message[:500]
    except Exception:
        logger.debug("meterline: unreadable OTLP error body", exc_info=True)
    return body[:200].decode("utf-8", "replace")
