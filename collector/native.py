"""The native ingest path: the embedded engine decodes OTLP protobuf itself.

Instead of flattening spans in Python (:func:`meterline.collector.decode.to_rows`)
and serializing ``Map`` columns through clickhouse-connect, the request bodies of
many requests are written, length-delimited, to one temporary file and inserted with
a single ``INSERT INTO otel_traces … SELECT … FROM file(…, Protobuf, …)``: ClickHouse
parses them with the reduced schema ``proto/otlp_traces.proto`` (passed inline with
``format_schema_source = 'string'``, so no ``format_schema_path`` is involved),
flattens resource → scope → span with ``ARRAY JOIN`` and builds the attribute maps
in SQL.

Contract (the same rows as the Python path, proved row for row by
``tests/collector/test_native.py``):
- Values are stringified exactly as :mod:`meterline.collector.decode` does. Strings,
  ints, bools and bytes (base64) are rendered in SQL; doubles, arrays and kvlists are
  rendered by decode's own Python function, called from the engine as a chdb UDF on
  just those values (arrays and kvlists are read as raw bytes by the reduced schema).
- A span's events and links are read as raw bytes and rendered by decode's own
  functions too, from chdb UDFs that return JSON (only for the spans that have any):
  in SQL, their nested maps doubled the statement's analysis time on every insert.
- Every value's oneof member is known (``input_format_protobuf_oneof_presence``), so
  an unset AnyValue is "" and ``int_value = 0`` is "0", as in decode.
- An attribute key given twice keeps its first position and its last value, like a
  Python ``dict``; ids are lowercase hex; ``SpanKind``/``StatusCode`` are decode's
  strings ("" when out of range); ``Duration`` is end − start; ``ServiceName`` is the
  resource's ``service.name``.
- The GenAI filter (unless ``keep_all``) and the span validation are decode's
  (:func:`meterline.collector.decode.span_problem`: ids, start/end and event times),
  applied by :func:`scan`, a cheap pass over the parsed message that reads only ids,
  times and attribute keys; it gives the per-request counts and removes the spans not
  written (re-serializing only the requests that had any), so the SQL has no ``WHERE``.
- One :func:`insert` is one engine insert (the materialized view into ``llm_usage``
  runs in it); it returns once the parts are written, or raises, exactly as
  :meth:`Store.insert_columns` does.
- The requests of an insert are written to a file under the data directory
  (:func:`temp_dir`, ``<data dir>/meterline-tmp``), removed after the insert;
  :func:`clean_temp_dir` removes what a killed process left there.

Known limits:
- Embedded store (chdb) only: the engine must read the temporary file. A ClickHouse
  server keeps the Python path (or the production Collector).
- The body must already have been parsed by upb (:func:`scan` needs the message);
  that parse is also what rejects malformed input with a 400 before anything is
  queued. OTLP/JSON requests go native by re-serializing the parsed message.
- Each insert costs a fixed ~40 ms of query analysis on this machine (a third of it
  in the materialized view), against ~16 ms for ``insert_columns``: the native path
  pays off with the writer's batching (thousands of spans an insert), not for a
  single small request. The statement is shaped for that cost: attribute lists are
  rendered once in an inner query, there is no ``WHERE`` (each condition in it cost
  ~3 ms), and events and links are rendered outside SQL.
- The renderers are registered as process-wide chdb functions named
  ``meterline_otlp_value_v1``, ``meterline_otlp_events_v1`` and
  ``meterline_otlp_links_v1``. Spans with events or links cost a Python call each.
- Protobuf edge cases that upb merges (a non-repeated field or message sent twice in
  one span) are read by ClickHouse as the last occurrence; senders never do this.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

# decode's own stringification is reused so both paths agree by construction.
from meterline.collector.decode import (
    COLUMNS,
    MAX_TIME_NS,
    SPAN_KINDS,
    STATUS_CODES,
    _as_string,
    event_columns,
    link_columns,
    parse_protobuf,
    span_problem,
)

if TYPE_CHECKING:
    from meterline.store import Store

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_PATH",
    "STRUCTURE",
    "Scan",
    "clean_temp_dir",
    "insert",
    "insert_requests",
    "insert_sql",
    "scan",
    "scan_body",
    "temp_dir",
]

SCHEMA_PATH = Path(__file__).with_name("proto") / "otlp_traces.proto"
"""The reduced, wire-compatible OTLP schema ClickHouse parses the bodies with."""

_MESSAGE = "ExportTraceServiceRequest"
_ERRORS_KEPT = 5
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)


@dataclass(slots=True)
class Scan:
    """One request ready for :func:`insert`: the body of its kept spans, and counts.

    Quacks like :class:`meterline.collector.decode.Rows` for the writer and the
    receivers: ``len()`` is the spans written, plus ``rejected`` and ``errors``.
    """

    body: bytes
    """The serialized ``ExportTraceServiceRequest`` holding only the spans to write."""
    spans: int = 0
    """Spans the insert will write (kept and valid)."""
    rejected: int = 0
    """Spans that were invalid (reported in ``partial_success``)."""
    errors: list[str] = field(default_factory=list)
    """Why spans were rejected (the first few)."""
    first: int = 0
    """The earliest start time of the spans written (ns; 0 when none)."""
    last: int = 0
    """The latest start time of the spans written (ns; 0 when none)."""

    def __len__(self) -> int:
        return self.spans

    @property
    def nbytes(self) -> int:
        """The body's size (what the writer's memory bound counts)."""
        return len(self.body)

    def starts(self) -> list[int]:
        """The start time of each span written, in the body's order."""
        return [
            span.start_time_unix_nano
            for resource_spans in parse_protobuf(self.body).resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def names(self) -> list[str]:
        """The name of each span written, in the body's order."""
        return [
            span.name
            for resource_spans in parse_protobuf(self.body).resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def split(self, groups: Sequence[Sequence[int]]) -> list[Scan]:
        """A scan per group of positions (in :meth:`starts`), with no rejections.

        One parse of the body, each span copied once: a request cut in many pieces
        costs about as much as one.
        """
        owner = {position: g for g, group in enumerate(groups) for position in group}
        requests = [ExportTraceServiceRequest() for _ in groups]
        counts = [0] * len(groups)
        firsts, lasts = [MAX_TIME_NS] * len(groups), [0] * len(groups)
        position = 0
        for resource_spans in parse_protobuf(self.body).resource_spans:
            resources: list[Any] = [None] * len(groups)
            for scope_spans in resource_spans.scope_spans:
                scopes: list[Any] = [None] * len(groups)
                for span in scope_spans.spans:
                    g = owner.get(position)
                    position += 1
                    if g is None:
                        continue
                    if scopes[g] is None:
                        if resources[g] is None:
                            resources[g] = requests[g].resource_spans.add()
                            resources[g].resource.CopyFrom(resource_spans.resource)
                            resources[g].schema_url = resource_spans.schema_url
                        scopes[g] = resources[g].scope_spans.add()
                        scopes[g].scope.CopyFrom(scope_spans.scope)
                        scopes[g].schema_url = scope_spans.schema_url
                    scopes[g].spans.add().CopyFrom(span)
                    start = span.start_time_unix_nano
                    counts[g] += 1
                    firsts[g], lasts[g] = min(firsts[g], start), max(lasts[g], start)
        return [
            Scan(
                body=request.SerializeToString() if n else b"",
                spans=n,
                first=first if n else 0,
                last=last,
            )
            for request, n, first, last in zip(requests, counts, firsts, lasts, strict=True)
        ]

    def select(self, indexes: Sequence[int]) -> Scan:
        """A scan of the spans at ``indexes`` (positions in :meth:`starts`), no rejections."""
        return self.split([indexes])[0]


def scan(request: ExportTraceServiceRequest, body: bytes, *, keep_all: bool = False) -> Scan:
    """Count what ``request`` (whose serialized form is ``body``) will write and reject.

    Applies decode's GenAI filter and validation without building any row. When a
    span is dropped (filtered out or invalid), it is removed from ``request``, which
    is serialized again: the insert then needs no ``WHERE``. A request whose spans
    are all kept (what meterline's instrumentation sends) keeps its body as is.
    """
    result = Scan(body=body)
    written = rejected = 0
    first, last = MAX_TIME_NS, 0
    errors = result.errors
    dropped: list[tuple[Any, int]] = []  # (spans container, index), in visiting order
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            spans = scope_spans.spans
            for index, span in enumerate(spans):
                if not keep_all:
                    for kv in span.attributes:
                        if kv.key.startswith("gen_ai."):
                            break
                    else:
                        dropped.append((spans, index))
                        continue
                trace_id = span.trace_id
                span_id = span.span_id
                start = span.start_time_unix_nano
                end = span.end_time_unix_nano
                if (
                    len(trace_id) == 16
                    and trace_id != _ZERO_TRACE_ID
                    and len(span_id) == 8
                    and span_id != _ZERO_SPAN_ID
                    and start != 0
                    and start <= end <= MAX_TIME_NS
                ):
                    events = span.events
                    if not events or all(e.time_unix_nano <= MAX_TIME_NS for e in events):
                        written += 1
                        if start < first:
                            first = start
                        if start > last:
                            last = start
                        continue
                rejected += 1
                dropped.append((spans, index))
                if len(errors) < _ERRORS_KEPT:
                    errors.append(span_problem(span) or "")
    if dropped:
        for spans, index in reversed(dropped):  # later indexes first, so earlier stay valid
            del spans[index]
        result.body = request.SerializeToString() if written else b""
    result.spans = written
    result.rejected = rejected
    if written:
        result.first, result.last = first, last
    return result


def scan_body(body: bytes, *, keep_all: bool = False) -> Scan:
    """Parse a protobuf body and :func:`scan` it.

    Raises:
        MalformedRequest: the body is not an ``ExportTraceServiceRequest``.
    """
    return scan(parse_protobuf(body), body, keep_all=keep_all)


# ---- SQL -------------------------------------------------------------------------

_UDF = "meterline_otlp_value_v1"
_EVENTS_UDF = "meterline_otlp_events_v1"
_LINKS_UDF = "meterline_otlp_links_v1"
_MAPS = "Array(Map(String, String))"
# The JSON the events and links renderers return: field -> ClickHouse type, in the
# order of decode's event_columns / link_columns and of the table's columns.
_EVENT_FIELDS = (("time", "Array(UInt64)"), ("name", "Array(String)"), ("attributes", _MAPS))
_LINK_FIELDS = (
    ("trace_id", "Array(String)"),
    ("span_id", "Array(String)"),
    ("trace_state", "Array(String)"),
    ("attributes", _MAPS),
)
_KIND_DOUBLE, _KIND_ARRAY, _KIND_KVLIST = 4, 5, 6

_VALUE_TYPE = (
    "Tuple(string_value String, bool_value Bool, int_value Int64, double_value Float64, "
    "array_value String, kvlist_value String, bytes_value String, "
    "string_value_strindex Int32, kind Enum8('none' = 0, 'string' = 1, 'bool' = 2, "
    "'int' = 3, 'double' = 4, 'array' = 5, 'kvlist' = 6, 'bytes' = 7, 'strindex' = 8))"
)
_KV_TYPE = f"Array(Tuple(key String, value {_VALUE_TYPE}))"
STRUCTURE = (
    "resource_spans Array(Tuple("
    f"resource Tuple(attributes {_KV_TYPE}), "
    "scope_spans Array(Tuple("
    "scope Tuple(name String, version String), "
    "spans Array(Tuple("
    "trace_id String, span_id String, trace_state String, parent_span_id String, "
    "name String, kind Int32, start_time_unix_nano UInt64, end_time_unix_nano UInt64, "
    f"attributes {_KV_TYPE}, "
    "events Array(String), links Array(String), "
    "status Tuple(message String, code Int32)))))))"
)
"""The columns ClickHouse reads from each ``ExportTraceServiceRequest``."""


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _strings(values: Sequence[str]) -> str:
    return "[" + ", ".join(_literal(v) for v in values) + "]"


def _value_sql(v: str) -> str:
    """An AnyValue tuple as decode's string (doubles, arrays and kvlists by the UDF)."""
    return (
        f"multiIf({v}.kind = 'string', {v}.string_value, "
        f"{v}.kind = 'int', toString({v}.int_value), "
        f"{v}.kind = 'bool', if({v}.bool_value, 'true', 'false'), "
        f"{v}.kind = 'bytes', base64Encode({v}.bytes_value), "
        f"{v}.kind = 'strindex', toString({v}.string_value_strindex), "
        f"{v}.kind = 'none', '', "
        f"{_UDF}(toUInt8({v}.kind), {v}.double_value, concat({v}.array_value, {v}.kvlist_value)))"
    )


def _keys_sql(kvs: str) -> str:
    return f"arrayMap(kv -> kv.key, {kvs})"


def _values_sql(kvs: str) -> str:
    return f"arrayMap(kv -> {_value_sql('kv.value')}, {kvs})"


def _map_sql(keys: str, values: str) -> str:
    """Parallel key and value arrays as a Map like decode's dict: first position, last value.

    ``keys`` and ``values`` are plain columns (computed once by the inner query), so
    the de-duplication, which only runs for the rows that need it (``if`` evaluates its
    branches lazily; OTLP forbids repeated keys), costs little to analyse.
    """
    first = f"arrayFilter((key, n) -> n = 1, {keys}, arrayEnumerateUniq({keys}))"
    # a Map lookup finds the first entry: in the reversed arrays, the last value
    last = f"mapFromArrays(arrayReverse({keys}), arrayReverse({values}))"
    return (
        f"if(arrayUniq({keys}) = length({keys}), mapFromArrays({keys}, {values}), "
        f"mapFromArrays({first}, arrayMap(key -> {last}[key], {first})))"
    )


def _rendered_sql(udf: str, raw: str) -> str:
    """JSON of a span's raw events or links rendered by ``udf`` ('' when there are none).

    ``if`` evaluates its branches lazily, so Python runs only for the spans that have any.
    """
    joined = f"arrayStringConcat(arrayMap(x -> base64Encode(x), {raw}), ',')"
    return f"if(empty({raw}), '', ifNull({udf}({joined}), ''))"


def _nanos_sql(x: str) -> str:
    return f"fromUnixTimestamp64Nano(toInt64({x}))"


def _hex_sql(x: str) -> str:
    return f"lower(hex({x}))"


def _select_sql(source: str) -> str:
    """The SELECT producing ``COLUMNS`` from every span of the requests in ``source``.

    Two levels: the inner query flattens resource → scope → span with ``ARRAY JOIN``
    and renders each attribute list once as parallel key and value arrays; the outer
    one builds the columns from those plain columns. There is no ``WHERE``: :func:`scan`
    already removed the spans that are not written (each filter condition costs the
    engine milliseconds of analysis per insert).
    """
    inner = [
        "s.start_time_unix_nano AS t_start",
        "s.end_time_unix_nano AS t_end",
        "s.trace_id AS t_trace",
        "s.span_id AS t_span",
        "s.parent_span_id AS t_parent",
        "s.trace_state AS t_state",
        "s.name AS t_name",
        "s.kind AS t_kind",
        f"{_keys_sql('rs.resource.attributes')} AS r_keys",
        f"{_values_sql('rs.resource.attributes')} AS r_values",
        "ss.scope.name AS c_name",
        "ss.scope.version AS c_version",
        f"{_keys_sql('s.attributes')} AS a_keys",
        f"{_values_sql('s.attributes')} AS a_values",
        "s.status.code AS t_code",
        "s.status.message AS t_message",
        f"{_rendered_sql(_EVENTS_UDF, 's.events')} AS e_json",
        f"{_rendered_sql(_LINKS_UDF, 's.links')} AS l_json",
    ]
    kinds = f"transform(t_kind, {list(range(len(SPAN_KINDS)))}, {_strings(SPAN_KINDS)}, '')"
    codes = f"transform(t_code, {list(range(len(STATUS_CODES)))}, {_strings(STATUS_CODES)}, '')"
    outer = [
        _nanos_sql("t_start"),
        _hex_sql("t_trace"),
        _hex_sql("t_span"),
        _hex_sql("t_parent"),
        "t_state",
        "t_name",
        kinds,
        "r_map['service.name']",
        f"{_map_sql('r_keys', 'r_values')} AS r_map",
        "c_name",
        "c_version",
        _map_sql("a_keys", "a_values"),
        "t_end - t_start",
        codes,
        "t_message",
        *(f"JSONExtract(e_json, '{name}', '{type_}')" for name, type_ in _EVENT_FIELDS),
        *(f"JSONExtract(l_json, '{name}', '{type_}')" for name, type_ in _LINK_FIELDS),
    ]
    times = COLUMNS.index("Events.Timestamp")  # ns in the JSON, DateTime64(9) in the table
    outer[times] = f"arrayMap(x -> {_nanos_sql('x')}, {outer[times]})"
    assert len(outer) == len(COLUMNS)
    outer_sql = ",\n  ".join(outer)
    inner_sql = ",\n    ".join(inner)
    return (
        f"SELECT {outer_sql}\nFROM (\n  SELECT {inner_sql}\n  FROM {source}\n"
        "  ARRAY JOIN resource_spans AS rs\n"
        "  ARRAY JOIN rs.scope_spans AS ss\n"
        "  ARRAY JOIN ss.spans AS s\n)"
    )


def _settings_sql() -> str:
    settings = {
        "format_schema_source": "string",
        "format_schema": SCHEMA_PATH.read_text(encoding="utf-8"),
        "format_schema_message_name": _MESSAGE,
        "input_format_protobuf_oneof_presence": "1",
    }
    return "SETTINGS " + ", ".join(f"{k} = {_literal(v)}" for k, v in settings.items())


_SETTINGS_SQL: str | None = None
_COLUMNS_SQL = ", ".join(f"`{name}`" for name in COLUMNS)


def insert_sql(path: str) -> str:
    """The statement inserting the length-delimited requests in ``path`` (``{db}`` unbound)."""
    global _SETTINGS_SQL
    if _SETTINGS_SQL is None:
        _SETTINGS_SQL = _settings_sql()
    source = f"file({_literal(path)}, 'Protobuf', {_literal(STRUCTURE)})"
    return (
        f"INSERT INTO {{db}}.otel_traces ({_COLUMNS_SQL})\n{_select_sql(source)}\n{_SETTINGS_SQL}"
    )


# ---- UDFs --------------------------------------------------------------------------

_udf_lock = threading.Lock()
_udfs_registered = False


def _render(kind: int, double: float, raw: bytes) -> str:
    """decode's string of a double, array or kvlist AnyValue (called by the engine)."""
    value = AnyValue()
    if kind == _KIND_DOUBLE:
        value.double_value = double
    elif kind == _KIND_ARRAY:
        value.array_value.ParseFromString(raw)
    elif kind == _KIND_KVLIST:
        value.kvlist_value.ParseFromString(raw)
    return _as_string(value)


def _messages(cls: Any, raw: bytes) -> list[Any]:
    return [cls.FromString(base64.b64decode(part)) for part in raw.split(b",")]


def _render_events(raw: bytes) -> str:
    """decode's event columns of one span, as JSON (``raw``: its base64 events, comma-joined)."""
    columns = event_columns(_messages(Span.Event, raw))
    return json.dumps(
        {name: c for (name, _), c in zip(_EVENT_FIELDS, columns, strict=True)}, ensure_ascii=False
    )


def _render_links(raw: bytes) -> str:
    """decode's link columns of one span, as JSON (``raw``: its base64 links, comma-joined)."""
    columns = link_columns(_messages(Span.Link, raw))
    return json.dumps(
        {name: c for (name, _), c in zip(_LINK_FIELDS, columns, strict=True)}, ensure_ascii=False
    )


def _register_udfs() -> None:
    """Register :func:`_render` with the process's chdb engine (once)."""
    global _udfs_registered
    with _udf_lock:
        if _udfs_registered:
            return
        import chdb

        chdb.create_function(_UDF, _render, ["UInt8", "Float64", bytes], "String")
        chdb.create_function(_EVENTS_UDF, _render_events, [bytes], "String")
        chdb.create_function(_LINKS_UDF, _render_links, [bytes], "String")
        _udfs_registered = True


# ---- insert ------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def insert(store: Store, scans: Sequence[Scan]) -> None:
    """Write the spans of ``scans`` in one engine insert.

    Returns once the parts are written (the durable ack point, as for
    :meth:`Store.insert_columns`).

    Raises:
        ValueError: ``store`` is not the embedded (chdb) store.
        Exception: whatever the engine raised; nothing of the failed insert is acked.
    """
    if store.kind != "chdb":
        raise ValueError(f"the native path needs the embedded store, not {store!r}")
    items = [item for item in scans if item.spans]
    if not items:
        return
    _register_udfs()
    directory = temp_dir(store)
    directory.mkdir(exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="meterline-otlp-", suffix=".pb", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            for item in items:
                out.write(_varint(len(item.body)))
                out.write(item.body)
        store.command(insert_sql(path))
    finally:
        try:
            os.unlink(path)
        except OSError:
            logger.debug("could not remove %s", path, exc_info=True)


TEMP_DIRNAME = "meterline-tmp"


def temp_dir(store: Store) -> Path:
    """Where the native path's request files go: ``<data dir>/meterline-tmp``.

    Under the data directory rather than the system's temporary directory, so a killed
    process leaves nothing elsewhere and the next start can remove what it left
    (:func:`clean_temp_dir`); the engine reads the files on the same disk it writes.
    """
    if store.data_dir is None:
        raise ValueError(f"the native path needs the embedded store, not {store!r}")
    return Path(store.data_dir) / TEMP_DIRNAME


def clean_temp_dir(store: Store) -> int:
    """Remove everything in :func:`temp_dir` (files a killed process left); returns the count.

    Call it only while no insert runs: at start, once the store (whose data directory
    only this process can open) is open.
    """
    directory = temp_dir(store)
    removed = 0
    if not directory.is_dir():
        return 0
    for entry in directory.iterdir():
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError as exc:
            logger.warning("cannot remove the leftover %s: %s", entry, exc)
    if removed:
        logger.info("removed %d leftover temporary files from %s", removed, directory)
    return removed


def insert_requests(
    store: Store, bodies: Sequence[bytes], *, keep_all: bool = False
) -> list[tuple[int, int]]:
    """Parse, scan and insert protobuf request bodies in one engine insert.

    Returns:
        ``(written, rejected)`` per body, in order.

    Raises:
        MalformedRequest: a body is not an ``ExportTraceServiceRequest`` (nothing
            is written).
    """
    scans = [scan_body(body, keep_all=keep_all) for body in bodies]
    insert(store, scans)
    return [(item.spans, item.rejected) for item in scans]
