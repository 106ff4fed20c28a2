"""Native re-framing for client_protocol_version, checked against the engine itself.

The expected stream is built from one engine query per column (so the data length of
each column comes from the engine, not from the walker under test).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from meterline.clickhouse_http._errors import ClickHouseError
from meterline.clickhouse_http._native import reframe

if TYPE_CHECKING:
    from meterline.store import Store

COLUMNS = {
    "u8": "toUInt8(number)",
    "s": "repeat('x', number)",
    "lc": "toLowCardinality(toString(number % 3))",
    "lcn": "toLowCardinality(if(number % 2 = 0, NULL, toString(number)))",
    "attrs": "map(toLowCardinality(toString(number)), toString(number * 2), 'k', 'v')",
    "arr": "range(number)",
    "nested": "[[toLowCardinality('x')], []]",
    "empty_lc": "CAST([], 'Array(LowCardinality(String))')",
    "tup": "CAST((number, 'x'), 'Tuple(a UInt64, `b c` String)')",
    "ts": "toDateTime64('2024-01-01 00:00:00.123456789', 9, 'UTC')",
    "dec": "toDecimal128(number, 5)",
    "fixed": "toFixedString('ab', 2)",
    "uuid": "toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0')",
    "enum": "CAST('a', 'Enum8(\\'a\\' = 1, \\'b,(\\' = 2)')",
    "null": "NULL",
    "ip6": "toIPv6('::1')",
    "point": "CAST((1.0, 2.0), 'Point')",
    "map_arr": "map('a', [1, 2])",
    "flag": "true",
}


def _varuint_end(data: bytes, pos: int) -> int:
    while data[pos] & 0x80:
        pos += 1
    return pos + 1


def _string_end(data: bytes, pos: int) -> int:
    size, shift, start = 0, 0, pos
    while True:
        byte = data[pos]
        size |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            break
        shift += 7
    assert pos > start
    return pos + size


def _expected(store: Store, rows: int, revision: int) -> bytes:
    out = bytearray(b"\x01\x00\x02\xff\xff\xff\xff")
    if revision >= 54480:
        out += b"\x03\x00"
    out += b"\x00" + bytes([len(COLUMNS), rows])
    for name, expr in COLUMNS.items():
        one = store.raw_query(f"SELECT {expr} AS {name} FROM numbers({rows})", fmt="Native")
        header_start = _varuint_end(one, _varuint_end(one, 0))
        header_end = _string_end(one, _string_end(one, header_start))
        out += one[header_start:header_end]
        if revision >= 54454:
            out.append(0)
        out += one[header_end:]
    return bytes(out)


@pytest.mark.parametrize("revision", [54405, 54460, 54483, 60000])
@pytest.mark.parametrize("rows", [1, 7])
def test_reframe_matches_the_engine_column_by_column(
    ch_store: Store, revision: int, rows: int
) -> None:
    select = ", ".join(f"{expr} AS {name}" for name, expr in COLUMNS.items())
    native = ch_store.raw_query(f"SELECT {select} FROM numbers({rows})", fmt="Native")
    assert reframe(native, revision) == _expected(ch_store, rows, min(revision, 54483))


def test_revision_zero_and_empty_results_pass_through(ch_store: Store) -> None:
    native = ch_store.raw_query("SELECT 1 AS a", fmt="Native")
    assert reframe(native, 0) == native
    assert reframe(b"", 54460) == b""


def test_unwalkable_types_are_refused(ch_store: Store) -> None:
    native = ch_store.raw_query("SELECT 1::Dynamic AS d", fmt="Native")
    with pytest.raises(ClickHouseError) as caught:
        reframe(native, 54460)
    assert caught.value.code == 48


def test_truncated_stream_is_incorrect_data(ch_store: Store) -> None:
    native = ch_store.raw_query("SELECT 'abc' AS s", fmt="Native")
    with pytest.raises(ClickHouseError) as caught:
        reframe(native[:-1], 54460)
    assert caught.value.code == 117
