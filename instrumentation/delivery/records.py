"""Span records: what the spool keeps of an ended span until the collector has it.

Contract: :func:`span_record` turns an ended span into a small JSON document — name, trace
and span ids, flags, trace state, parent, kind, times, attributes, events, links, status,
instrumentation scope and resource — cheap enough for the app's own thread (~12 µs, where
OTLP-encoding one span alone costs ~150–300 µs in a real app). :func:`encode_records`
OTLP-encodes many records at once, when they are sent, with the official encoder
(``encode_spans`` over ``ReadableSpan``\\ s rebuilt from the records), so a span spooled
and sent is byte for byte what the OTLP exporter would send; encoding the same records
again gives the same bytes, so a resend carries the same identity.

JSON (not pickle or marshal): reading a record cannot run code or crash the interpreter.
Known limit: the SDK's dropped attribute/event/link counts are not kept (they are 0 unless
an app exceeds the SDK's limits).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

VERSION = 1
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# Resources and scopes are few and long-lived: their JSON is made once per object (the
# object is kept, so its id is not reused meanwhile) and embedded as a string.
_fragments: dict[int, tuple[Any, str]] = {}
_MAX_FRAGMENTS = 256


class RecordError(ValueError):
    """A record that is not one of ours (its checksum matched, its content does not)."""


def span_record(span: ReadableSpan) -> bytes:
    """The record of an ended span (UTF-8 JSON)."""
    ctx = span.context
    parent = span.parent
    scope = span.instrumentation_scope
    resource = span.resource
    status = span.status
    doc = [
        VERSION,
        span.name,
        ctx.trace_id,
        ctx.span_id,
        int(ctx.trace_flags),
        list(ctx.trace_state.items()) if ctx.trace_state else None,
        [parent.span_id, parent.is_remote] if parent is not None else None,
        span.kind.value,
        span.start_time,
        span.end_time,
        _plain(span.attributes),
        [[e.name, e.timestamp, _plain(e.attributes)] for e in span.events] or None,
        [
            [
                link.context.trace_id,
                link.context.span_id,
                int(link.context.trace_flags),
                link.context.is_remote,
                _plain(link.attributes),
            ]
            for link in span.links
        ]
        or None,
        status.status_code.value,
        status.description,
        _fragment(scope, _scope_doc) if scope is not None else None,
        _fragment(resource, _resource_doc) if resource is not None else None,
    ]
    return _dumps(doc).encode()


def _plain(attributes: Any) -> dict[str, Any] | None:
    """A plain dict of an attribute mapping (``copy`` is one C call for the SDK's)."""
    if not attributes:
        return None
    copy = getattr(attributes, "copy", None)
    return copy() if copy is not None else dict(attributes)


def _fragment(obj: Any, doc: Any) -> str:
    entry = _fragments.get(id(obj))
    if entry is not None and entry[0] is obj:
        return entry[1]
    text = _dumps(doc(obj))
    if len(_fragments) >= _MAX_FRAGMENTS:
        _fragments.clear()
    _fragments[id(obj)] = (obj, text)
    return text


def _scope_doc(scope: InstrumentationScope) -> list[Any]:
    return [scope.name, scope.version, scope.schema_url, dict(scope.attributes or {})]


def _resource_doc(resource: Resource) -> list[Any]:
    return [dict(resource.attributes), resource.schema_url]


def to_request(records: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Spool records (``(kind, payload)``) as one serialized ``ExportTraceServiceRequest``.

    OTLP records are taken as they are, span records encoded together: concatenated
    requests are one request (its only field is repeated).

    Raises:
        RecordError: a span record is not valid.
    """
    from meterline.instrumentation.delivery.spool import SPAN

    requests: list[bytes] = []
    spans: list[bytes] = []
    for kind, payload in records:
        (spans if kind == SPAN else requests).append(payload)
    if spans:
        requests.append(encode_records(spans))
    return b"".join(requests)


def encode_records(records: Iterable[bytes]) -> bytes:
    """One serialized ``ExportTraceServiceRequest`` holding the records' spans.

    Raises:
        RecordError: a record is not valid JSON of this format.
    """
    resources: dict[str, Resource] = {}
    scopes: dict[str, InstrumentationScope] = {}
    spans = [_span(r, resources, scopes) for r in records]
    return encode_spans(spans).SerializeToString() if spans else b""


def _span(
    record: bytes, resources: dict[str, Resource], scopes: dict[str, InstrumentationScope]
) -> ReadableSpan:
    try:
        doc = json.loads(record)
        (version, name, trace_id, span_id, flags, state, parent, kind, start, end, attributes,
         events, links, code, description, scope, resource) = doc  # fmt: skip
        if version != VERSION:
            raise RecordError(f"unknown span record version {version!r}")
        trace_state = TraceState([tuple(kv) for kv in state]) if state else None
        context = SpanContext(trace_id, span_id, False, TraceFlags(flags), trace_state)
        return ReadableSpan(
            name=name,
            context=context,
            parent=SpanContext(trace_id, parent[0], bool(parent[1])) if parent else None,
            resource=_cached(resources, resource, _resource),
            attributes=_attributes(attributes),
            events=[Event(n, _attributes(a), ts) for n, ts, a in events or ()],
            links=[
                Link(SpanContext(t, s, bool(remote), TraceFlags(f)), _attributes(a))
                for t, s, f, remote, a in links or ()
            ],
            kind=SpanKind(kind),
            status=Status(StatusCode(code), description),
            start_time=start,
            end_time=end,
            instrumentation_scope=_cached(scopes, scope, _scope),
        )
    except RecordError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise RecordError(f"not a span record: {exc}") from exc


def _attributes(value: Any) -> dict[str, Any] | None:
    if not value:
        return None
    return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}


def _cached(cache: dict[str, Any], text: str | None, make: Any) -> Any:
    if text is None:
        return None
    found = cache.get(text)
    if found is None:
        found = cache[text] = make(json.loads(text))
    return found


def _resource(value: list[Any]) -> Resource:
    attributes, schema_url = value
    return Resource(_attributes(attributes) or {}, schema_url)


def _scope(value: list[Any]) -> InstrumentationScope:
    name, version, schema_url, attributes = value
    return InstrumentationScope(name, version, schema_url, _attributes(attributes))
