"""OTLP trace requests → column-oriented rows of ``otel_traces``.

Contract:
- Values are stringified the way the otelcol-contrib ``clickhouse`` exporter does
  (pcommon ``AsString``): strings as is, ints in decimal, bools ``true``/``false``,
  arrays and maps as JSON, bytes base64. Ids are lowercase hex.
- ``SpanKind`` / ``StatusCode`` use the exporter's strings (``SPAN_KIND_CLIENT``,
  ``STATUS_CODE_ERROR``); ``Timestamp`` is the span start; ``Duration`` is in ns.
- A span is *rejected* (counted in ``partial_success``, with the reason) when its trace
  id is not 16 non-zero bytes, its span id not 8 non-zero bytes, its start time is
  missing or after its end, or its end time or an event's time is after
  :data:`MAX_TIME_NS` (:func:`span_problem`). Everything else of the request is kept.
  The native path (:mod:`meterline.collector.native`) applies the same checks.
- Unless ``keep_all`` is set, only GenAI spans are kept: spans with an attribute
  whose key starts with ``gen_ai.``. Dropping the others is filtering, not rejection.
- Bodies are read by :mod:`meterline.collector.parse` (protobuf, and OTLP/JSON into
  the same message); spans it cannot read are rejected there.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meterline.collector.parse import MalformedRequest, parse_json, parse_protobuf

__all__ = [
    "COLUMNS",
    "MAX_TIME_NS",
    "MalformedRequest",
    "Rows",
    "attributes",
    "event_columns",
    "link_columns",
    "parse_json",
    "parse_protobuf",
    "span_problem",
    "to_rows",
]

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
_NAME = COLUMNS.index("SpanName")

MAX_TIME_NS = 2**32 * 1_000_000_000 - 1
"""The latest time a span may carry: 2106-02-07T06:28:15.999999999Z.

``DateTime64(9)`` itself holds times up to 2262 (Int64 ns; 2^63 ns and more wrapped to
1677 on the native path and failed the insert on the Python one), but ``otel_traces``
sorts by ``toDateTime(Timestamp)`` (UInt32 seconds) and partitions by
``toDate(Timestamp)``, which wrap after this instant: a later span would be stored
under a wrong sort key and partition. OTLP times are unsigned, so there is no lower
bound beyond 1 ns (0 means "missing").
"""

_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)


def span_problem(span: Any) -> str | None:
    """Why a span cannot be stored (``None`` when it can); the order of the checks is fixed."""
    trace_id, span_id = span.trace_id, span.span_id
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE_ID:
        return f"span {span.name!r}: trace id must be 16 non-zero bytes"
    if len(span_id) != 8 or span_id == _ZERO_SPAN_ID:
        return f"span {span.name!r}: span id must be 8 non-zero bytes"
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if start == 0 or end < start:
        return f"span {span.name!r}: start time missing or after end time"
    if end > MAX_TIME_NS:
        return f"span {span.name!r}: time after 2106-02-07T06:28:15Z (beyond otel_traces' keys)"
    for event in span.events:
        if event.time_unix_nano > MAX_TIME_NS:
            return f"span {span.name!r}: an event's time is after 2106-02-07T06:28:15Z"
    return None


@dataclass
class Rows:
    """Column-oriented rows for ``otel_traces``, plus what was rejected."""

    columns: list[list[Any]] = field(default_factory=lambda: [[] for _ in COLUMNS])
    rejected: int = 0
    """Spans that were invalid (reported in ``partial_success``)."""
    errors: list[str] = field(default_factory=list)
    """Why spans were rejected (the first few)."""
    nbytes: int = 0
    """Size of the request body these rows came from (what the writer's memory bound
    counts; 0 when unknown)."""

    def __len__(self) -> int:
        return len(self.columns[0])

    @property
    def first(self) -> int:
        """The earliest ``Timestamp`` (ns; 0 when empty)."""
        return min(self.columns[0], default=0)

    @property
    def last(self) -> int:
        """The latest ``Timestamp`` (ns; 0 when empty)."""
        return max(self.columns[0], default=0)

    def extend(self, other: Rows) -> None:
        for mine, theirs in zip(self.columns, other.columns, strict=True):
            mine.extend(theirs)
        self.rejected += other.rejected

    def starts(self) -> list[int]:
        """Each row's ``Timestamp`` (the span's start, ns)."""
        return self.columns[0]

    def names(self) -> list[str]:
        """Each row's ``SpanName``."""
        return self.columns[_NAME]

    def select(self, indexes: Sequence[int]) -> Rows:
        """The rows at ``indexes`` (in that order), with no rejections."""
        return Rows(columns=[[column[i] for i in indexes] for column in self.columns])

    def split(self, groups: Sequence[Sequence[int]]) -> list[Rows]:
        """The rows of each group of indexes, with no rejections."""
        return [self.select(group) for group in groups]


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
                problem = span_problem(span)
                if problem:
                    rows.rejected += 1
                    if len(rows.errors) < 5:
                        rows.errors.append(problem)
                    continue
                trace_id, span_id = span.trace_id, span.span_id
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
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
