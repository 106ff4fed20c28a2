"""OTLP trace requests → column-oriented rows of ``otel_traces``.

Contract:
- Values are stringified the way the otelcol-contrib ``clickhouse`` exporter does
  (pcommon ``AsString``): strings as is, ints in decimal, bools ``true``/``false``,
  arrays and maps as JSON, bytes base64. Ids are lowercase hex.
- ``SpanKind`` / ``StatusCode`` use the exporter's strings (``SPAN_KIND_CLIENT``,
  ``STATUS_CODE_ERROR``); ``Timestamp`` is the span start; ``Duration`` is in ns.
- A span is *rejected* (counted in ``partial_success``) when its trace id is not 16
  bytes, its span id not 8 bytes, or its start time is missing or after its end.
  Everything else of the request is kept.
- Unless ``keep_all`` is set, only GenAI spans are kept: spans with an attribute
  whose key starts with ``gen_ai.``. Dropping the others is filtering, not rejection.
- OTLP/JSON (hex ids, lowerCamelCase keys) is parsed into the same protobuf message.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

COLUMNS = (
    "Timestamp",
    "TraceId",
    "SpanId",
    "ParentSpanId",
    "TraceState",
    "SpanName",
    "SpanKind",
    "ServiceName",
    "ResourceAttributes",
    "ScopeName",
    "ScopeVersion",
    "SpanAttributes",
    "Duration",
    "StatusCode",
    "StatusMessage",
    "Events.Timestamp",
    "Events.Name",
    "Events.Attributes",
    "Links.TraceId",
    "Links.SpanId",
    "Links.TraceState",
    "Links.Attributes",
)
"""Column names of ``otel_traces`` in the order :class:`Rows` holds them."""

SPAN_KINDS = (
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
)
STATUS_CODES = ("STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR")


class MalformedRequest(ValueError):
    """The request body is not a valid OTLP trace export request."""


@dataclass
class Rows:
    """Column-oriented rows for ``otel_traces``, plus what was rejected."""

    columns: list[list[Any]] = field(default_factory=lambda: [[] for _ in COLUMNS])
    rejected: int = 0
    """Spans that were invalid (reported in ``partial_success``)."""
    errors: list[str] = field(default_factory=list)
    """Why spans were rejected (the first few)."""

    def __len__(self) -> int:
        return len(self.columns[0])

    def extend(self, other: Rows) -> None:
        for mine, theirs in zip(self.columns, other.columns, strict=True):
            mine.extend(theirs)
        self.rejected += other.rejected


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise MalformedRequest(f"cannot decode the protobuf body: {exc}") from exc
    return request


_ID_KEYS = frozenset(("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"))


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON carries ids as hex; protobuf's JSON mapping expects base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError as exc:
                    raise MalformedRequest(f"{key} {value!r} is not hex") from exc
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)
    return node


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"cannot decode the JSON body: {exc}") from exc
    if not isinstance(document, dict):
        raise MalformedRequest("the JSON body must be an object with resourceSpans")
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(_hex_ids_to_base64(document), request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise MalformedRequest(f"invalid OTLP/JSON: {exc}") from exc
    return request


def _any_value(value: Any) -> Any:
    """An AnyValue as a plain Python value (for JSON of arrays and maps)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


def _as_string(value: Any) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        d = value.double_value
        return str(int(d)) if d.is_integer() and abs(d) < 1e21 else repr(d)
    if kind is None:
        return ""
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return json.dumps(_any_value(value), separators=(",", ":"))


def attributes(key_values: Any) -> dict[str, str]:
    return {kv.key: _as_string(kv.value) for kv in key_values}


def event_columns(events: Any) -> tuple[list[int], list[str], list[dict[str, str]]]:
    """One span's ``Events.Timestamp`` (ns), ``Events.Name`` and ``Events.Attributes``."""
    return (
        [e.time_unix_nano for e in events],
        [e.name for e in events],
        [attributes(e.attributes) for e in events],
    )


def link_columns(links: Any) -> tuple[list[str], list[str], list[str], list[dict[str, str]]]:
    """One span's ``Links.TraceId``, ``.SpanId``, ``.TraceState`` and ``.Attributes``."""
    return (
        [link.trace_id.hex() for link in links],
        [link.span_id.hex() for link in links],
        [link.trace_state for link in links],
        [attributes(link.attributes) for link in links],
    )


def _is_genai(key_values: Any) -> bool:
    return any(kv.key.startswith("gen_ai.") for kv in key_values)


def to_rows(request: ExportTraceServiceRequest, *, keep_all: bool = False) -> Rows:
    """Flatten a request into ``otel_traces`` columns, validating each span."""
    rows = Rows()
    (
        c_ts, c_trace, c_span, c_parent, c_state, c_name, c_kind, c_service, c_res,
        c_scope, c_scope_v, c_attrs, c_dur, c_status, c_status_msg,
        c_ev_ts, c_ev_name, c_ev_attrs, c_ln_trace, c_ln_span, c_ln_state, c_ln_attrs,
    ) = rows.columns  # fmt: skip
    for resource_spans in request.resource_spans:
        resource: dict[str, str] | None = None
        for scope_spans in resource_spans.scope_spans:
            scope_name = scope_spans.scope.name
            scope_version = scope_spans.scope.version
            for span in scope_spans.spans:
                if not keep_all and not _is_genai(span.attributes):
                    continue
                trace_id, span_id = span.trace_id, span.span_id
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                problem = None
                if len(trace_id) != 16 or trace_id == bytes(16):
                    problem = f"span {span.name!r}: trace id must be 16 non-zero bytes"
                elif len(span_id) != 8 or span_id == bytes(8):
                    problem = f"span {span.name!r}: span id must be 8 non-zero bytes"
                elif start == 0 or end < start:
                    problem = f"span {span.name!r}: start time missing or after end time"
                if problem:
                    rows.rejected += 1
                    if len(rows.errors) < 5:
                        rows.errors.append(problem)
                    continue
                if resource is None:
                    resource = attributes(resource_spans.resource.attributes)
                c_ts.append(start)
                c_trace.append(trace_id.hex())
                c_span.append(span_id.hex())
                c_parent.append(span.parent_span_id.hex())
                c_state.append(span.trace_state)
                c_name.append(span.name)
                kind = span.kind
                c_kind.append(SPAN_KINDS[kind] if 0 <= kind < len(SPAN_KINDS) else "")
                c_service.append(resource.get("service.name", ""))
                c_res.append(resource)
                c_scope.append(scope_name)
                c_scope_v.append(scope_version)
                c_attrs.append(attributes(span.attributes))
                c_dur.append(end - start)
                code = span.status.code
                c_status.append(STATUS_CODES[code] if 0 <= code < len(STATUS_CODES) else "")
                c_status_msg.append(span.status.message)
                for column, values in zip(
                    (c_ev_ts, c_ev_name, c_ev_attrs), event_columns(span.events), strict=True
                ):
                    column.append(values)
                for column, values in zip(
                    (c_ln_trace, c_ln_span, c_ln_state, c_ln_attrs),
                    link_columns(span.links),
                    strict=True,
                ):
                    column.append(values)
    return rows
