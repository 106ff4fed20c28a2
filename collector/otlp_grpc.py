"""OTLP/gRPC receiver: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

Same contract as the HTTP receiver: the response is sent after the durable write;
invalid, unreadable or engine-refused spans → ``partial_success``; a message that is
not protobuf at all → INVALID_ARGUMENT; bad token → UNAUTHENTICATED; store behind,
failing or shutting down → UNAVAILABLE (which OTLP exporters retry). Messages are
capped at 4 MiB like the Collector, after decompression.

Memory: each message then takes its bytes from the receivers' shared
:class:`~meterline.collector.budget.BodyBudget` until the writer took it (UNAVAILABLE
beyond it), and a connection has at most :data:`MAX_CONCURRENT_STREAMS` calls in
flight. Known limit: grpcio's Python API has no memory quota for grpc's own buffers, so
many connections each with messages in flight are bounded only per connection.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from meterline.collector.budget import BodyBudget, OverBudget
from meterline.collector.parse import MalformedRequest, read_protobuf
from meterline.collector.writer import Closed, Overloaded, Writer

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""The Collector's default; grpc applies it after decompression (a gzip or deflate bomb
is refused with RESOURCE_EXHAUSTED before it is inflated further)."""
MAX_CONCURRENT_STREAMS = 16
"""Calls one connection may have in flight (HTTP/2 ``SETTINGS_MAX_CONCURRENT_STREAMS``):
grpc reads every stream's message before the handler can refuse it, so this bounds what
one connection makes the server hold. An OTLP exporter sends one export at a time."""


SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class TraceService:
    """The Export method; it takes raw bytes so a malformed message is INVALID_ARGUMENT."""

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

    async def export(
        self, body: bytes, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if self._token is not None:
            metadata = dict(context.invocation_metadata() or ())
            scheme, _, given = str(metadata.get("authorization", "")).partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self._token
            ):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token")
        try:
            with self._budget.reservation() as held:
                held.add(len(body))
                try:
                    rows = self._writer.decode(read_protobuf(body), keep_all=self._keep_all)
                except MalformedRequest as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                del body  # the writer holds what it needs (and counts it)
                future = self._writer.submit(rows)
        except (Overloaded, OverBudget) as exc:
            await context.send_initial_metadata((("retry-after", str(exc.retry_after)),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except Closed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        try:
            await asyncio.wrap_future(future)
        except Exception as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"the store did not take the batch: {exc}"
            )
        response = trace_service_pb2.ExportTraceServiceResponse()
        if rows.rejected:
            response.partial_success.rejected_spans = rows.rejected
            response.partial_success.error_message = "; ".join(rows.errors)
        return response


def bind_server(
    host: str, port: int, *, flag: str = "--otlp-grpc-port"
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server bound to ``host:port`` (not started, no service yet) and its port.

    Binding comes first so ``serve`` can report a taken port before opening the store.

    Raises:
        ListenError: one line naming ``flag`` and why the port cannot be used.
    """
    from meterline.listen import bind, explain_grpc

    if port:  # a plain socket says why a port is taken, without grpc's own log line
        bind(host, port, flag=flag).close()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
            ("grpc.so_reuseport", 0),  # a second server on the port must fail, not share it
        ]
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpc's "Failed to bind to address …", without the reason
        bound = 0
    if bound == 0:
        raise explain_grpc(host, port, flag=flag)
    return server, bound


def add_trace_service(
    server: grpc.aio.Server,
    writer: Writer,
    *,
    token: str | None = None,
    keep_all: bool = False,
    budget: BodyBudget | None = None,
) -> None:
    """Serve the OTLP trace service on ``server`` (before it starts)."""
    service = TraceService(writer, token=token, keep_all=keep_all, budget=budget)
    handler = grpc.unary_unary_rpc_method_handler(
        service.export,
        request_deserializer=None,  # raw bytes: we parse and report errors ourselves
        response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),)
    )


def create_server(
    writer: Writer,
    *,
    host: str,
    port: int,
    token: str | None = None,
    keep_all: bool = False,
    budget: BodyBudget | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with the trace service; returns it and the bound port.

    Raises:
        ListenError: the port cannot be bound.
    """
    server, bound = bind_server(host, port)
    add_trace_service(server, writer, token=token, keep_all=keep_all, budget=budget)
    return server, bound
