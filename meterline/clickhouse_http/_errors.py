"""ClickHouse exceptions as the HTTP interface reports them.

A ClickHouse server answers a failed request with an HTTP status chosen from the
error code (``src/Server/HTTP/exceptionCodeToHTTPStatus.cpp``), the header
``X-ClickHouse-Exception-Code`` and a body ``Code: N. DB::Exception: ... (NAME)
(version V)``. clickhouse-connect reads the header for ``DatabaseError.code`` and the
``(NAME)`` from the body; Grafana's plugin shows the body.
"""

from __future__ import annotations

import re

CODES: dict[str, int] = {
    "UNSUPPORTED_METHOD": 1,
    "UNSUPPORTED_PARAMETER": 2,
    "CANNOT_PARSE_TEXT": 6,
    "THERE_IS_NO_COLUMN": 8,
    "DUPLICATE_COLUMN": 15,
    "CANNOT_PARSE_ESCAPE_SEQUENCE": 25,
    "CANNOT_PARSE_QUOTED_STRING": 26,
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED": 27,
    "BAD_ARGUMENTS": 36,
    "UNKNOWN_ELEMENT_IN_AST": 37,
    "CANNOT_PARSE_DATE": 38,
    "CANNOT_PARSE_DATETIME": 41,
    "ILLEGAL_COLUMN": 44,
    "UNKNOWN_FUNCTION": 46,
    "UNKNOWN_IDENTIFIER": 47,
    "NOT_IMPLEMENTED": 48,
    "UNKNOWN_TYPE": 50,
    "TYPE_MISMATCH": 53,
    "UNKNOWN_STORAGE": 56,
    "UNKNOWN_TABLE": 60,
    "SYNTAX_ERROR": 62,
    "UNKNOWN_AGGREGATE_FUNCTION": 63,
    "CANNOT_PARSE_NUMBER": 72,
    "UNKNOWN_FORMAT": 73,
    "CANNOT_OPEN_FILE": 76,
    "UNKNOWN_TYPE_OF_QUERY": 78,
    "UNKNOWN_DATABASE": 81,
    "UNKNOWN_COMPRESSION_METHOD": 89,
    "UNKNOWN_SETTING": 115,
    "INCORRECT_DATA": 117,
    "UNKNOWN_TYPE_OF_AST_NODE": 123,
    "UNKNOWN_DIRECTION_OF_SORTING": 152,
    "TIMEOUT_EXCEEDED": 159,
    "READONLY": 164,
    "TOO_DEEP_AST": 167,
    "TOO_BIG_AST": 168,
    "UNKNOWN_USER": 192,
    "TOO_MANY_SIMULTANEOUS_QUERIES": 202,
    "WRONG_PASSWORD": 193,
    "REQUIRED_PASSWORD": 194,
    "SOCKET_TIMEOUT": 209,
    "UNEXPECTED_AST_STRUCTURE": 223,
    "QUERY_IS_TOO_LARGE": 229,
    "CANNOT_DECOMPRESS": 271,
    "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE": 321,
    "UNKNOWN_DATABASE_ENGINE": 336,
    "CANNOT_PARSE_UUID": 376,
    "HTTP_LENGTH_REQUIRED": 381,
    "QUERY_IS_PROHIBITED": 392,
    "CANNOT_COMPILE_REGEXP": 427,
    "CANNOT_SCHEDULE_TASK": 439,
    "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING": 441,
    "FUNCTION_NOT_ALLOWED": 446,
    "ACCESS_DENIED": 497,
    "UNKNOWN_ROLE": 511,
    "SET_NON_GRANTED_ROLE": 512,
    "AUTHENTICATION_FAILED": 516,
    "CANNOT_PARSE_IPV4": 675,
    "CANNOT_PARSE_IPV6": 676,
    "UNKNOWN_EXCEPTION": 1002,
}
_NAMES = {code: name for name, code in CODES.items()}

_STATUS_BY_NAME: dict[str, int] = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(
        ("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE"), 403
    ),
    **dict.fromkeys(
        (
            "BAD_ARGUMENTS",
            "CANNOT_COMPILE_REGEXP",
            "CANNOT_PARSE_TEXT",
            "CANNOT_PARSE_ESCAPE_SEQUENCE",
            "CANNOT_PARSE_QUOTED_STRING",
            "CANNOT_PARSE_DATE",
            "CANNOT_PARSE_DATETIME",
            "CANNOT_PARSE_NUMBER",
            "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
            "CANNOT_PARSE_IPV4",
            "CANNOT_PARSE_IPV6",
            "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
            "CANNOT_PARSE_UUID",
            "DUPLICATE_COLUMN",
            "ILLEGAL_COLUMN",
            "UNKNOWN_ELEMENT_IN_AST",
            "UNKNOWN_TYPE_OF_AST_NODE",
            "THERE_IS_NO_COLUMN",
            "TOO_DEEP_AST",
            "TOO_BIG_AST",
            "UNEXPECTED_AST_STRUCTURE",
            "SYNTAX_ERROR",
            "INCORRECT_DATA",
            "TYPE_MISMATCH",
            "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "UNKNOWN_TABLE",
            "UNKNOWN_FUNCTION",
            "UNKNOWN_IDENTIFIER",
            "UNKNOWN_TYPE",
            "UNKNOWN_STORAGE",
            "UNKNOWN_DATABASE",
            "UNKNOWN_SETTING",
            "UNKNOWN_DIRECTION_OF_SORTING",
            "UNKNOWN_AGGREGATE_FUNCTION",
            "UNKNOWN_FORMAT",
            "UNKNOWN_DATABASE_ENGINE",
            "UNKNOWN_TYPE_OF_QUERY",
            "UNKNOWN_ROLE",
        ),
        404,
    ),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "CANNOT_SCHEDULE_TASK": 503,
    # a server answers 500; 503 tells clients and proxies that a retry may succeed
    "TOO_MANY_SIMULTANEOUS_QUERIES": 503,
}
_STATUS_BY_CODE = {CODES[name]: status for name, status in _STATUS_BY_NAME.items()}

_ENGINE_MESSAGE = re.compile(r"Code: (\d+)\. (DB::Exception: .*)", re.DOTALL)
_TRAILING_NAME = re.compile(r"\s*\(([A-Z][A-Z0-9_]*)\)\s*$")
_TRAILING_VERSION = re.compile(r"\s*\(version [^()]*(\([^()]*\))?[^()]*\)\s*$")


def http_status(code: int) -> int:
    """The HTTP status a ClickHouse server sends for exception ``code``."""
    return _STATUS_BY_CODE.get(code, 500)


class ClickHouseError(Exception):
    """A ClickHouse exception: ``code``, ``name`` and message, ready to be sent over HTTP."""

    def __init__(self, name_or_code: str | int, message: str) -> None:
        if isinstance(name_or_code, int):
            self.code = name_or_code
            self.name = _NAMES.get(name_or_code, "")
        else:
            self.code = CODES[name_or_code]
            self.name = name_or_code
        self.message = message
        super().__init__(f"Code: {self.code}. DB::Exception: {message}. ({self.name})")

    @property
    def status(self) -> int:
        return http_status(self.code)

    def body(self, version: str) -> str:
        """The response body a server sends: ``Code: N. DB::Exception: ... (NAME) (version V)``."""
        name = f" ({self.name})" if self.name else ""
        return f"Code: {self.code}. DB::Exception: {self.message}.{name} (version {version})\n"

    @classmethod
    def from_engine(cls, text: str) -> ClickHouseError:
        """Wrap an exception message from chdb (``Code: N. DB::Exception: ... (NAME)``)."""
        match = _ENGINE_MESSAGE.search(text)
        if not match:
            return cls("UNKNOWN_EXCEPTION", text.strip() or "unknown error")
        code = int(match.group(1))
        message = match.group(2)[len("DB::Exception: ") :].strip()
        # chdb sometimes nests the exception text of an inner error in the outer one
        while nested := _ENGINE_MESSAGE.match(message):
            message = nested.group(2)[len("DB::Exception: ") :].strip()
        name = _NAMES.get(code, "")
        while True:
            stripped = _TRAILING_VERSION.sub("", message).rstrip().removesuffix(".")
            name_match = _TRAILING_NAME.search(stripped)
            if name_match:
                name = name_match.group(1)
                stripped = stripped[: name_match.start()].rstrip().removesuffix(".")
            if stripped == message:
                break
            message = stripped
        error = cls(code, message)
        error.name = name
        return error
