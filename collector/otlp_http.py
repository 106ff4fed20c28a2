"""OTLP/HTTP receiver: ``POST /v1/traces`` (protobuf or JSON, optionally gzip).

Behaves like the OpenTelemetry Collector's receiver so stock exporters retry
correctly:
- 200 with an ``ExportTraceServiceResponse`` once the spans are durably written;
  ``partial_success.rejected_spans`` counts the spans rejected, with the first reasons
  in ``error_message``: invalid (:func:`meterline.collector.decode.span_problem`),
  unreadable (invalid UTF-8, nested too deeply: :mod:`meterline.collector.parse`) or
  refused by the engine (:mod:`meterline.collector.writer`). The rest is stored.
- 400 (a body that is not OTLP protobuf/JSON at all), 401 (bad token), 413 (body over
  20 MiB, compressed or not), 415 (other content types), 404/405 for other
  paths/methods: a ``google.rpc.Status`` body in the request's encoding; not retried
  by exporters.
- 503 with ``Retry-After`` when the store is behind, failing, or shutting down, or
  when more bytes of bodies are being read than :mod:`meterline.collector.budget`
  allows; exporters retry. Bodies are read and gunzipped chunk by chunk within that
  budget, so neither one large body nor many at once can take unbounded memory.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)

from meterline.collector.budget import BodyBudget, OverBudget, Reservation
from meterline.collector.parse import MalformedRequest, read_json, read_protobuf
from meterline.collector.writer import Closed, Overloaded, Writer

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 20 * 1024 * 1024
"""The Collector's default ``max_request_body_size``; also the limit after gunzip."""

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


_CHUNK = 1024 * 1024


def _gunzip(body: bytes, held: Reservation) -> bytes:
    """Decompress in 1 MiB steps, each held in the budget, up to :data:`MAX_BODY_BYTES`."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    chunks: list[bytes] = []
    size = 0
    data = body
    try:
        while True:
            chunk = inflater.decompress(data, _CHUNK)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _HTTPError(413, f"decompressed body exceeds {MAX_BODY_BYTES} bytes")
            held.add(len(chunk))
            chunks.append(chunk)
            data = inflater.unconsumed_tail
            if not data and (inflater.eof or not chunk):
                break
    except zlib.error as exc:
        raise _HTTPError(400, f"cannot gunzip the body: {exc}") from exc
    if not inflater.eof:
        raise _HTTPError(400, "cannot gunzip the body: it ends before the gzip stream does")
    return b"".join(chunks)


class OTLPHTTPApp:
    """The receiver as a bare ASGI app (no framework on the hot path)."""

    def __init__(
        self,
        writer: Writer,
        *,
        token: str | None = None,
        keep_all: bool = False,
        budget: BodyBudget | None = None,
    ):
        self._writer = writer
        self._budget = budget or BodyBudget()
        self._token = token.encode() if token else None
        self._keep_all = keep_all
        self.accepted = 0
        self.rejected = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        as_json = content_type == JSON
        try:
            body = await self._handle(scope, headers, content_type, receive)
            await self._respond(send, 200, body, JSON if as_json else PROTOBUF)
        except _HTTPError as err:
            await self._respond(
                send, err.status, self._status_body(err.status, err.message, as_json),
                JSON if as_json else PROTOBUF, err.headers,
            )  # fmt: skip

    async def _handle(
        self, scope: Scope, headers: dict[str, str], content_type: str, receive: Receive
    ) -> bytes:
        if scope["path"].rstrip("/") != "/v1/traces":
            raise _HTTPError(404, f"no such path {scope['path']!r}; OTLP traces go to /v1/traces")
        if scope["method"] != "POST":
            raise _HTTPError(405, f"method {scope['method']} not allowed; use POST",
                             {"Allow": "POST"})  # fmt: skip
        if self._token is not None:
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self._token
            ):
                raise _HTTPError(401, "missing or invalid bearer token",
                                 {"WWW-Authenticate": "Bearer"})  # fmt: skip
        if content_type not in (PROTOBUF, JSON):
            raise _HTTPError(415, f"unsupported content type {content_type!r}; "
                             f"use {PROTOBUF} or {JSON}")  # fmt: skip
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise _HTTPError(413, f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity", "gzip"):
            raise _HTTPError(415, f"unsupported content encoding {encoding!r}; use gzip")
        try:
            with self._budget.reservation() as held:
                body = await self._read_body(receive, held)
                if encoding == "gzip":
                    body = _gunzip(body, held)
                try:
                    parsed = read_json(body) if content_type == JSON else read_protobuf(body)
                    rows = self._writer.decode(parsed, keep_all=self._keep_all)
                except MalformedRequest as exc:
                    raise _HTTPError(400, str(exc)) from exc
                del parsed, body  # the writer holds what it needs (and counts it)
                future = self._writer.submit(rows)
        except (Overloaded, OverBudget) as exc:
            raise _HTTPError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from exc
        except Closed as exc:
            raise _HTTPError(503, str(exc), {"Retry-After": "5"}) from exc
        try:
            await asyncio.wrap_future(future)
        except Exception as exc:
            raise _HTTPError(503, f"the store did not take the batch: {exc}",
                             {"Retry-After": "2"}) from exc  # fmt: skip
        self.accepted += len(rows)
        self.rejected += rows.rejected
        response = ExportTraceServiceResponse()
        if rows.rejected:
            response.partial_success.rejected_spans = rows.rejected
            response.partial_success.error_message = "; ".join(rows.errors)
        if content_type == JSON:
            return json.dumps(json_format.MessageToDict(response)).encode()
        return response.SerializeToString()

    @staticmethod
    async def _read_body(receive: Receive, held: Reservation) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _HTTPError(400, "client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _HTTPError(413, f"body exceeds {MAX_BODY_BYTES} bytes")
            held.add(len(chunk))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def _status_body(status: int, message: str, as_json: bool) -> bytes:
        code = {400: 3, 401: 16, 404: 5, 405: 12, 413: 8, 415: 3, 503: 14}.get(status, 2)
        proto = status_pb2.Status(code=code, message=message)
        if as_json:
            return json.dumps(json_format.MessageToDict(proto)).encode()
        return proto.SerializeToString()

    @staticmethod
    async def _respond(
        send: Send, status: int, body: bytes, content_type: str,
        extra: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        headers = [(b"content-type", content_type.encode()),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
