"""Why an insert failed: the data in it, or the store.

The writer merges many requests into one insert, so the answer decides who pays:

- :data:`Cause.STORE`: the store cannot take anything right now or at all (memory,
  disk, network, timeouts, a merge backlog, a missing table, a broken statement).
  Retrying the same data later can succeed, and splitting it would not help: every
  request of the insert is answered "retry" (503 / UNAVAILABLE).
- :data:`Cause.DATA`: the engine refused a value (a constraint, a cast, a parse, a
  function or a Python UDF raising on a value, a block over the partition limit, a
  value the client library cannot serialize). The same data fails again, so the
  writer splits the insert down to the spans that fail and rejects only those
  (``partial_success``), writing the rest.
- :data:`Cause.UNKNOWN`: anything else. The writer isolates the failing request (its
  neighbours are written) but answers it "retry": it is not dropped on a guess.

Classification reads clickhouse-connect's error name (``exc.name``, the engine's
symbolic code, e.g. ``VIOLATED_CONSTRAINT``), never the message, except to tell the
two meanings of ``TOO_MANY_PARTS`` apart (too many partitions in one insert block is
the data's; too many parts in a partition is a merge backlog).
"""

from __future__ import annotations

import enum

__all__ = ["DATA_ERRORS", "STORE_ERRORS", "Cause", "cause_of", "describe"]


class Cause(enum.Enum):
    STORE = "store"
    DATA = "data"
    UNKNOWN = "unknown"


DATA_ERRORS = frozenset({
    "ARGUMENT_OUT_OF_BOUND",
    "ATTEMPT_TO_READ_AFTER_EOF",
    "CANNOT_CONVERT_TYPE",
    "CANNOT_PARSE_BOOL",
    "CANNOT_PARSE_DATE",
    "CANNOT_PARSE_DATETIME",
    "CANNOT_PARSE_ESCAPE_SEQUENCE",
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    "CANNOT_PARSE_NUMBER",
    "CANNOT_PARSE_QUOTED_STRING",
    "CANNOT_PARSE_TEXT",
    "CANNOT_PARSE_UUID",
    "CANNOT_READ_ALL_DATA",
    "CANNOT_READ_ARRAY_FROM_TEXT",
    "DECIMAL_OVERFLOW",
    "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",
    "INCORRECT_DATA",
    "PROTOBUF_BAD_CAST",
    "PY_EXCEPTION_OCCURED",
    "SIZES_OF_ARRAYS_DONT_MATCH",
    "TOO_DEEP_RECURSION",
    "TOO_LARGE_ARRAY_SIZE",
    "TOO_LARGE_STRING_SIZE",
    "UNKNOWN_PROTOBUF_FORMAT",
    "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    "VIOLATED_CONSTRAINT",
})  # fmt: skip
"""Engine errors raised by a value of the inserted data."""

STORE_ERRORS = frozenset({
    "ABORTED",
    "ACCESS_DENIED",
    "ALL_CONNECTION_TRIES_FAILED",
    "AUTHENTICATION_FAILED",
    "CANNOT_ALLOCATE_MEMORY",
    "CANNOT_CREATE_DIRECTORY",
    "CANNOT_FSYNC",
    "CANNOT_MREMAP",
    "CANNOT_OPEN_FILE",
    "CANNOT_READ_FROM_FILE_DESCRIPTOR",
    "CANNOT_SCHEDULE_TASK",
    "CANNOT_WRITE_TO_FILE_DESCRIPTOR",
    "CANNOT_WRITE_TO_OSTREAM",
    "FILE_DOESNT_EXIST",
    "ILLEGAL_TYPE_OF_ARGUMENT",
    "KEEPER_EXCEPTION",
    "LOGICAL_ERROR",
    "MEMORY_LIMIT_EXCEEDED",
    "NETWORK_ERROR",
    "NO_FREE_CONNECTION",
    "NO_SUCH_COLUMN_IN_TABLE",
    "NOT_ENOUGH_SPACE",
    "POCO_EXCEPTION",
    "QUERY_WAS_CANCELLED",
    "READONLY",
    "SERVER_OVERLOADED",
    "SOCKET_TIMEOUT",
    "SYNTAX_ERROR",
    "SYSTEM_ERROR",
    "TABLE_IS_DROPPED",
    "TABLE_IS_READ_ONLY",
    "TIMEOUT_EXCEEDED",
    "TOO_FEW_LIVE_REPLICAS",
    "TOO_MANY_PARTS",
    "TOO_MANY_SIMULTANEOUS_QUERIES",
    "TOO_SLOW",
    "UNEXPECTED_END_OF_FILE",
    "UNKNOWN_DATABASE",
    "UNKNOWN_FUNCTION",
    "UNKNOWN_IDENTIFIER",
    "UNKNOWN_SETTING",
    "UNKNOWN_STATUS_OF_INSERT",
    "UNKNOWN_TABLE",
    "UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE",
})  # fmt: skip
"""Engine errors of the store itself: resources, availability, schema, statement."""

_PARTITIONS = "partitions for single INSERT block"


def cause_of(exc: BaseException) -> Cause:
    """Whether ``exc``, raised by an insert, is the store's or the data's (see module doc)."""
    name = getattr(exc, "name", None)
    if isinstance(name, str) and name:
        if name == "TOO_MANY_PARTS" and _PARTITIONS in str(exc):
            return Cause.DATA
        if name == "PY_EXCEPTION_OCCURED" and "MemoryError" in str(exc):
            return Cause.STORE
        if name in DATA_ERRORS:
            return Cause.DATA
        if name in STORE_ERRORS:
            return Cause.STORE
        return Cause.UNKNOWN
    if isinstance(exc, (MemoryError, OSError)):  # OSError: also ConnectionError, ENOSPC
        return Cause.STORE
    if isinstance(exc, (OverflowError, UnicodeEncodeError)):  # a value, client side
        return Cause.DATA
    try:
        from clickhouse_connect.driver import exceptions as cc
    except ImportError:  # pragma: no cover - the server extra installs it
        return Cause.UNKNOWN
    if isinstance(exc, cc.DataError):  # the client library cannot serialize a value
        return Cause.DATA
    if isinstance(exc, (cc.OperationalError, cc.InterfaceError, cc.StreamClosedError)):
        return Cause.STORE
    return Cause.UNKNOWN


def describe(exc: BaseException) -> str:
    """The first line of the error, short enough for ``partial_success.error_message``."""
    text = str(exc).strip().split("\n", 1)[0]
    return text if len(text) <= 300 else text[:297] + "..."
