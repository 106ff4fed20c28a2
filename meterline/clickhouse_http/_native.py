"""Native output for a client that names its protocol revision.

Over HTTP, ``client_protocol_version=R`` asks the server to write ``FORMAT Native`` as
its TCP protocol does at revision ``R``; clickhouse-go (Grafana's ClickHouse plugin)
always sends it, clickhouse-connect probes for it. chdb only writes revision 0, so
this module re-frames chdb's blocks the way ``NativeWriter`` does for ``R``:

- ``R > 0``: each block starts with ``BlockInfo`` (field 1 ``is_overflows = 0``,
  field 2 ``bucket_num = -1``, from revision 54480 field 3 ``out_of_order_buckets = []``,
  then 0);
- ``R >= 54454``: each column's type name is followed by a ``has_custom_serialization``
  byte, always 0 here (chdb's revision-0 output is dense);
- ``LowCardinality`` stays on the wire (it is kept from revision 54405, and at 0).

Inserting that byte means finding where each column's data ends, so the column data is
walked by type. Known limits: ``Dynamic``, ``Variant``, ``JSON``, ``Object`` and
``AggregateFunction`` columns cannot be walked and are refused (NOT_IMPLEMENTED) when
``R > 0``, as is ``LowCardinality`` for ``0 < R < 54405`` (a server would strip it).
Revisions above :data:`MAX_REVISION` are served as :data:`MAX_REVISION`.
"""

from __future__ import annotations

import struct

from meterline.clickhouse_http._errors import ClickHouseError

MIN_REVISION_WITH_LOW_CARDINALITY = 54405
MIN_REVISION_WITH_CUSTOM_SERIALIZATION = 54454
MIN_REVISION_WITH_OUT_OF_ORDER_BUCKETS = 54480
MAX_REVISION = 54483
"""The newest revision whose framing this module writes."""

_FIXED = {
    **dict.fromkeys(("UInt8", "Int8", "Bool", "Enum8", "Nothing"), 1),
    **dict.fromkeys(("UInt16", "Int16", "Date", "Enum16", "BFloat16"), 2),
    **dict.fromkeys(
        ("UInt32", "Int32", "Float32", "Date32", "DateTime", "IPv4", "Time", "Decimal32"), 4
    ),
    **dict.fromkeys(("UInt64", "Int64", "Float64", "DateTime64", "Time64", "Decimal64"), 8),
    **dict.fromkeys(("UInt128", "Int128", "UUID", "IPv6", "Decimal128"), 16),
    **dict.fromkeys(("UInt256", "Int256", "Decimal256"), 32),
}
_ALIASES = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "Polygon": "Array(Ring)",
    "MultiLineString": "Array(Ring)",
    "MultiPolygon": "Array(Polygon)",
}
_UINT64 = struct.Struct("<Q")
_LC_NEED_GLOBAL_DICTIONARY = 1 << 8
_LC_HAS_ADDITIONAL_KEYS = 1 << 9


def _unsupported(message: str) -> ClickHouseError:
    return ClickHouseError("NOT_IMPLEMENTED", f"meterline: {message}")


def _corrupt(message: str) -> ClickHouseError:
    return ClickHouseError("INCORRECT_DATA", f"meterline: malformed Native block: {message}")


def split_type(spec: str) -> tuple[str, list[str]]:
    """``"Map(String, Array(UInt8))"`` → ``("Map", ["String", "Array(UInt8)"])``."""
    spec = spec.strip()
    open_at = spec.find("(")
    if open_at < 0:
        return spec, []
    if not spec.endswith(")"):
        raise _corrupt(f"bad type name {spec!r}")
    name, inner = spec[:open_at].strip(), spec[open_at + 1 : -1]
    args: list[str] = []
    depth, quote, start, i = 0, "", 0, 0
    while i < len(inner):
        c = inner[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'`\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(inner[start:i].strip())
            start = i + 1
        i += 1
    if inner.strip():
        args.append(inner[start:].strip())
    return name, args


def _element_type(element: str) -> str:
    """The type of a tuple element, which may be ``name Type``."""
    depth, quote = 0, ""
    for i, c in enumerate(element):
        if quote:
            if c == quote:
                quote = ""
        elif c in '`"':
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c.isspace() and depth == 0:
            return element[i:].strip()
    return element


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def need(self, size: int) -> None:
        if self.pos + size > len(self.data):
            raise _corrupt("truncated")

    def skip(self, size: int) -> None:
        self.need(size)
        self.pos += size

    def varuint(self) -> int:
        result, shift = 0, 0
        while True:
            self.need(1)
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise _corrupt("varint too long")

    def uint64(self) -> int:
        self.need(8)
        (value,) = _UINT64.unpack_from(self.data, self.pos)
        self.pos += 8
        return value

    def string(self) -> bytes:
        size = self.varuint()
        self.need(size)
        value = bytes(self.data[self.pos : self.pos + size])
        self.pos += size
        return value


def _normalize(spec: str) -> tuple[str, list[str]]:
    name, args = split_type(spec)
    while name in _ALIASES:
        name, args = split_type(_ALIASES[name])
    if name == "SimpleAggregateFunction":
        return _normalize(args[1])
    if name == "Nested":
        return "Array", [f"Tuple({', '.join(args)})"]
    if name == "Map":
        return "Array", [f"Tuple({', '.join(args)})"]
    return name, args


def has_low_cardinality(spec: str) -> bool:
    return "LowCardinality(" in spec


def _skip_prefix(spec: str, reader: _Reader) -> None:
    """Skip the serialization state prefixes that precede a column's data."""
    name, args = _normalize(spec)
    if name == "LowCardinality":
        reader.skip(8)  # KeysSerializationVersion
    elif name in ("Array", "Nullable"):
        _skip_prefix(args[0], reader)
    elif name == "Tuple":
        for element in args:
            _skip_prefix(_element_type(element), reader)


def _skip_data(spec: str, reader: _Reader, rows: int) -> None:
    """Skip ``rows`` values of type ``spec`` (bulk serialization, after prefixes)."""
    if rows == 0:
        return
    name, args = _normalize(spec)
    size = _FIXED.get(name)
    if size is not None:
        reader.skip(size * rows)
    elif name == "Decimal":
        precision = int(args[0]) if args else 10
        width = 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32
        reader.skip(width * rows)
    elif name.startswith("Interval"):
        reader.skip(8 * rows)
    elif name == "String":
        for _ in range(rows):
            reader.skip(reader.varuint())
    elif name == "FixedString":
        reader.skip(int(args[0]) * rows)
    elif name == "Nullable":
        reader.skip(rows)
        _skip_data(args[0], reader, rows)
    elif name == "Array":
        reader.skip(8 * (rows - 1))
        total = reader.uint64()
        _skip_data(args[0], reader, total)
    elif name == "Tuple":
        for element in args:
            _skip_data(_element_type(element), reader, rows)
    elif name == "LowCardinality":
        dictionary_type = args[0]
        inner_name, inner_args = split_type(dictionary_type)
        if inner_name == "Nullable":
            dictionary_type = inner_args[0]
        remaining = rows
        while remaining > 0:
            index_type = reader.uint64()
            if index_type & _LC_NEED_GLOBAL_DICTIONARY:
                raise _unsupported("LowCardinality with a global dictionary")
            if index_type & _LC_HAS_ADDITIONAL_KEYS:
                keys = reader.uint64()
                _skip_data(dictionary_type, reader, keys)
            indexes = reader.uint64()
            if indexes == 0 or indexes > remaining:
                raise _corrupt("LowCardinality index count")
            reader.skip(indexes * (1 << (index_type & 0xFF)))
            remaining -= indexes
    else:
        raise _unsupported(
            f"cannot write {spec} columns for a client_protocol_version above 0; "
            "query without client_protocol_version or cast the column"
        )


def _block_info(revision: int) -> bytes:
    info = b"\x01\x00\x02\xff\xff\xff\xff"
    if revision >= MIN_REVISION_WITH_OUT_OF_ORDER_BUCKETS:
        info += b"\x03\x00"
    return info + b"\x00"


def _varuint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def reframe(data: bytes, revision: int) -> bytes:
    """Rewrite chdb's revision-0 Native ``data`` for a client at ``revision``.

    Raises:
        ClickHouseError: NOT_IMPLEMENTED for a column type that cannot be walked,
            INCORRECT_DATA if ``data`` is not a well-formed Native stream.
    """
    if revision <= 0 or not data:
        return data
    revision = min(revision, MAX_REVISION)
    reader = _Reader(data)
    out = bytearray()
    info = _block_info(revision)
    custom = revision >= MIN_REVISION_WITH_CUSTOM_SERIALIZATION
    while reader.pos < len(reader.data):
        columns = reader.varuint()
        rows = reader.varuint()
        out += info + _varuint(columns) + _varuint(rows)
        for _ in range(columns):
            header_start = reader.pos
            reader.string()
            type_name = reader.string().decode()
            if revision < MIN_REVISION_WITH_LOW_CARDINALITY and has_low_cardinality(type_name):
                raise _unsupported(
                    f"LowCardinality columns need client_protocol_version >= "
                    f"{MIN_REVISION_WITH_LOW_CARDINALITY} or 0"
                )
            out += reader.data[header_start : reader.pos]
            if custom:
                out.append(0)
            data_start = reader.pos
            if rows:
                _skip_prefix(type_name, reader)
                _skip_data(type_name, reader, rows)
            out += reader.data[data_start : reader.pos]
    return bytes(out)
