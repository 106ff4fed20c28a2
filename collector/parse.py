"""OTLP bodies → ``ExportTraceServiceRequest``, rejecting only the spans that cannot be read.

Contract:
- :func:`read_protobuf` parses with upb. A body upb refuses as a whole because of one
  span (a string that is not UTF-8, values nested deeper than protobuf's limit of 100
  messages) is read again span by span: the spans that protobuf cannot parse are
  dropped and listed in :attr:`Parsed.unreadable` with the reason, the rest is kept. A
  resource or scope that cannot be parsed drops the spans under it. Only a body that is
  not protobuf at all (broken wire format) is :class:`MalformedRequest` (a 400).
- :func:`read_json` parses OTLP/JSON (hex ids, lowerCamelCase or snake_case keys) span
  by span the same way: a span with a lone-surrogate escape, a bad id, a wrong type or
  nesting beyond protobuf's JSON limit (100 messages) is dropped with its reason. A
  document too deep for Python's JSON parser, or not JSON, is :class:`MalformedRequest`.
- A dropped span counts as rejected like decode's invalid spans: when it is a GenAI
  span (an attribute key starting with ``gen_ai.``, read without decoding the values)
  or when every span is kept (``keep_all``); otherwise it is filtered out silently.
- The fast path is unchanged: a body upb accepts costs one parse and nothing more.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

__all__ = [
    "MalformedRequest",
    "Parsed",
    "Unreadable",
    "parse_json",
    "parse_protobuf",
    "read_json",
    "read_protobuf",
]


class MalformedRequest(ValueError):
    """The request body is not a valid OTLP trace export request."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A span dropped because it cannot be read."""

    genai: bool
    """Whether it is a GenAI span (rejected even without ``keep_all``)."""
    reason: str
    """Why, for ``partial_success.error_message``."""


@dataclass(slots=True)
class Parsed:
    """A request as read from its body."""

    request: ExportTraceServiceRequest
    """The spans that could be read."""
    body: bytes | None
    """The protobuf serialization of :attr:`request` when at hand (the body itself when
    nothing was dropped), else ``None``."""
    unreadable: list[Unreadable] = field(default_factory=list)
    """Spans dropped because they cannot be read."""
    size: int = 0
    """The length of the body as received (after any decompression)."""

    def rejected(self, *, keep_all: bool) -> list[str]:
        """Reasons of the dropped spans that count as rejected."""
        return [u.reason for u in self.unreadable if keep_all or u.genai]


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    """Parse a protobuf body strictly: any unreadable part fails the whole body."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise MalformedRequest(f"cannot decode the protobuf body: {exc}") from exc
    return request


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    """Parse OTLP/JSON, failing the whole body on any span that cannot be read."""
    parsed = read_json(body)
    if parsed.unreadable:
        raise MalformedRequest(f"invalid OTLP/JSON: {parsed.unreadable[0].reason}")
    return parsed.request


# ---- protobuf --------------------------------------------------------------------


def _lenient_classes() -> dict[str, Any]:
    """Message classes that read the request down to each span's bytes, strings as bytes.

    Field numbers come from the official descriptors, so the wire format is theirs.
    """
    fdp = descriptor_pb2.FileDescriptorProto(
        name="meterline/lenient_otlp_traces.proto", package="meterline.lenient", syntax="proto3"
    )
    f = descriptor_pb2.FieldDescriptorProto
    number = {
        (m.DESCRIPTOR.name, name): m.DESCRIPTOR.fields_by_name[name].number
        for m, names in (
            (ExportTraceServiceRequest, ("resource_spans",)),
            (ResourceSpans, ("resource", "scope_spans", "schema_url")),
            (ScopeSpans, ("scope", "spans", "schema_url")),
            (Span, ("name", "attributes")),
        )
        for name in names
    }
    layout: dict[str, list[tuple[str, str, str]]] = {
        # message: [(field, official message, type or message name)]
        "Request": [("resource_spans", "ExportTraceServiceRequest", "*ResourceSpans")],
        "ResourceSpans": [("resource", "ResourceSpans", "bytes"),
                          ("scope_spans", "ResourceSpans", "*ScopeSpans"),
                          ("schema_url", "ResourceSpans", "bytes")],
        "ScopeSpans": [("scope", "ScopeSpans", "bytes"), ("spans", "ScopeSpans", "*bytes"),
                       ("schema_url", "ScopeSpans", "bytes")],
        "SpanKeys": [("name", "Span", "bytes"), ("attributes", "Span", "*Key")],
        "Key": [("key", "", "bytes")],
    }  # fmt: skip
    for message, fields in layout.items():
        proto = fdp.message_type.add(name=message)
        for name, official, kind in fields:
            repeated = kind.startswith("*")
            kind = kind.lstrip("*")
            field_proto = proto.field.add(
                name=name,
                number=number[(official, name)] if official else 1,  # KeyValue.key is 1
                label=f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL,
            )
            if kind == "bytes":
                field_proto.type = f.TYPE_BYTES
            else:
                field_proto.type = f.TYPE_MESSAGE
                field_proto.type_name = f".meterline.lenient.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{fdp.package}.{name}"))
        for name in layout
    }


_LENIENT = _lenient_classes()
_GENAI = b"gen_ai."


def _why(exc: Exception) -> str:
    text = str(exc)
    if "UTF-8" in text:
        return "a string is not valid UTF-8"
    if "Depth" in text or "too deep" in text:
        return "values nested too deeply"
    return "cannot be decoded"


def _span_summary(raw: bytes) -> tuple[str, bool]:
    """A span's name (for messages) and whether it is GenAI, read without decoding values."""
    try:
        keys = _LENIENT["SpanKeys"].FromString(raw)
    except DecodeError:
        return "?", False
    name = keys.name.decode("utf-8", errors="replace")
    return name, any(kv.key.startswith(_GENAI) for kv in keys.attributes)


def read_protobuf(body: bytes) -> Parsed:
    """Parse a protobuf body, dropping only the spans protobuf cannot read (see module doc).

    Raises:
        MalformedRequest: the body is not protobuf at all.
    """
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
        return Parsed(request, body, size=len(body))
    except DecodeError as exc:
        strict_error = exc
    try:
        lenient = _LENIENT["Request"].FromString(body)
    except DecodeError:
        raise MalformedRequest(f"cannot decode the protobuf body: {strict_error}") from None
    request = ExportTraceServiceRequest()
    unreadable: list[Unreadable] = []

    def drop_all(scopes: Any, why: str) -> None:
        for scope in scopes:
            for raw in scope.spans:
                name, genai = _span_summary(raw)
                unreadable.append(Unreadable(genai, f"span {name!r}: {why}"))

    for lenient_rs in lenient.resource_spans:
        resource_spans = request.resource_spans.add()
        try:
            resource_spans.resource.ParseFromString(lenient_rs.resource)
            resource_spans.schema_url = lenient_rs.schema_url.decode("utf-8")
        except (DecodeError, UnicodeDecodeError) as exc:
            del request.resource_spans[-1]
            drop_all(lenient_rs.scope_spans, f"its resource cannot be read: {_why(exc)}")
            continue
        for lenient_ss in lenient_rs.scope_spans:
            scope_spans = resource_spans.scope_spans.add()
            try:
                scope_spans.scope.ParseFromString(lenient_ss.scope)
                scope_spans.schema_url = lenient_ss.schema_url.decode("utf-8")
            except (DecodeError, UnicodeDecodeError) as exc:
                del resource_spans.scope_spans[-1]
                drop_all([lenient_ss], f"its instrumentation scope cannot be read: {_why(exc)}")
                continue
            spans = scope_spans.spans
            for raw in lenient_ss.spans:
                try:
                    spans.add().ParseFromString(raw)
                except DecodeError as exc:
                    del spans[-1]
                    name, genai = _span_summary(raw)
                    unreadable.append(Unreadable(genai, f"span {name!r}: {_why(exc)}"))
    if not unreadable:  # upb refused the body, yet every part reads: keep its verdict
        raise MalformedRequest(f"cannot decode the protobuf body: {strict_error}")
    return Parsed(request, request.SerializeToString(), unreadable, len(body))


# ---- JSON ------------------------------------------------------------------------


def _field(node: dict[str, Any], camel: str, snake: str) -> Any:
    return node.pop(camel) if camel in node else node.pop(snake, None)


def _hex_to_base64(node: dict[str, Any], keys: tuple[str, ...]) -> None:
    """OTLP/JSON carries ids as hex; protobuf's JSON mapping expects base64."""
    for key in keys:
        value = node.get(key)
        if isinstance(value, str):
            try:
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise ValueError(f"{key} {value!r} is not hex") from None


_SPAN_IDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_LINK_IDS = ("traceId", "spanId", "trace_id", "span_id")


def _json_span_summary(node: Any) -> tuple[str, bool]:
    if not isinstance(node, dict):
        return "?", False
    name = node.get("name")
    attributes = node.get("attributes")
    genai = isinstance(attributes, list) and any(
        isinstance(kv, dict) and isinstance(kv.get("key"), str) and kv["key"].startswith("gen_ai.")
        for kv in attributes
    )
    return (name if isinstance(name, str) else "?"), genai


def _json_error(exc: Exception) -> str:
    text = str(exc)
    if "too deep" in text:
        return "values nested too deeply"
    if "surrogate" in text:
        return "a string is not valid Unicode (an unpaired surrogate escape)"
    return text.split("\n")[0][:200]


def _parse_into(node: Any, message: Any) -> None:
    """ParseDict ``node`` into ``message``; raises ValueError for anything protobuf refuses."""
    if not isinstance(node, dict):
        raise ValueError(f"expected an object, not {type(node).__name__}")
    try:
        json_format.ParseDict(node, message, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, TypeError) as exc:
        raise ValueError(_json_error(exc)) from None


def read_json(body: bytes) -> Parsed:
    """Parse an OTLP/JSON body, dropping only the spans that cannot be read (see module doc).

    Raises:
        MalformedRequest: not JSON, too deep to parse, or not an export request object.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"cannot decode the JSON body: {exc}") from exc
    except RecursionError:
        raise MalformedRequest("cannot decode the JSON body: nested too deeply") from None
    if not isinstance(document, dict):
        raise MalformedRequest("the JSON body must be an object with resourceSpans")
    resource_list = _field(document, "resourceSpans", "resource_spans") or []
    if not isinstance(resource_list, list):
        raise MalformedRequest("resourceSpans must be a list")
    request = ExportTraceServiceRequest()
    unreadable: list[Unreadable] = []

    def drop(span_nodes: Any, why: str) -> None:
        for node in span_nodes if isinstance(span_nodes, list) else ():
            name, genai = _json_span_summary(node)
            unreadable.append(Unreadable(genai, f"span {name!r}: {why}"))

    for rs_node in resource_list:
        scope_list = None
        if isinstance(rs_node, dict):
            scope_list = _field(rs_node, "scopeSpans", "scope_spans")
        resource_spans = request.resource_spans.add()
        try:
            _parse_into(rs_node, resource_spans)
            if not isinstance(scope_list or [], list):
                raise ValueError("scopeSpans must be a list")
        except ValueError as exc:
            del request.resource_spans[-1]
            for ss_node in scope_list if isinstance(scope_list, list) else ():
                if isinstance(ss_node, dict):
                    drop(ss_node.get("spans"), f"its resource cannot be read: {exc}")
            continue
        for ss_node in scope_list or ():
            span_list = _field(ss_node, "spans", "spans") if isinstance(ss_node, dict) else None
            scope_spans = resource_spans.scope_spans.add()
            try:
                _parse_into(ss_node, scope_spans)
                if not isinstance(span_list or [], list):
                    raise ValueError("spans must be a list")
            except ValueError as exc:
                del resource_spans.scope_spans[-1]
                drop(span_list, f"its instrumentation scope cannot be read: {exc}")
                continue
            spans = scope_spans.spans
            for node in span_list or ():
                name, genai = _json_span_summary(node)
                try:
                    _span_ids_to_base64(node)
                except ValueError as exc:
                    unreadable.append(Unreadable(genai, f"span {name!r}: {exc}"))
                    continue
                try:
                    _parse_into(node, spans.add())
                except ValueError as exc:
                    del spans[-1]
                    unreadable.append(Unreadable(genai, f"span {name!r}: {exc}"))
    return Parsed(request, None, unreadable, len(body))


def _span_ids_to_base64(node: Any) -> None:
    if isinstance(node, dict):
        _hex_to_base64(node, _SPAN_IDS)
        links = node.get("links")
        for link in links if isinstance(links, list) else ():
            if isinstance(link, dict):
                _hex_to_base64(link, _LINK_IDS)
