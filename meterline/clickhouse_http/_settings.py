"""Which settings a read-only request may change, and the limits it runs under.

A read-only request's session is prepared in this order (see ``_engine``):

1. :class:`Limits` (execution time, memory, result size) are set;
2. the request's settings that are in :data:`ALLOWED` are validated here and set;
3. ``readonly = 1``: from here on the engine refuses every change of a setting (a URL
   parameter or a ``SETTINGS`` clause), including the limits and ``readonly`` itself;
4. every other setting the request names is handed to the engine as ``SET``, which
   answers as a ClickHouse server answers a ``readonly = 1`` user: UNKNOWN_SETTING for a
   name it does not know, READONLY for a change, nothing for the value already in force.

So a setting that names a file (``format_template_*``, ``format_schema``,
``output_format_schema``...), lifts a limit or changes the dialect is refused by the
engine, not by a list of ours. :data:`ALLOWED` holds what real clients send: Grafana's
plugin (clickhouse-go over HTTP) sends its row limit as ``limit`` and any "custom
settings" a user configured; clickhouse-connect sends settings only if the server's
``system.settings`` marks them writable, which under ``readonly = 1`` it does not (it
then drops them or raises ``ProgrammingError``, as against any read-only server), so its
``date_time_input_format`` / ``cast_string_to_dynamic_use_inference`` defaults are listed
for clients that send them regardless. Each value is validated (type and range) before it
reaches the engine; a limit can only be lowered (a higher ``max_execution_time``, which
clickhouse-go derives from its timeout, is held at the endpoint's).

Settings in a query's own ``SETTINGS`` clause are not moved: the engine refuses them
after ``readonly = 1`` like any other change (send them as URL parameters instead).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from meterline.clickhouse_http._errors import ClickHouseError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Limits:
    """Bounds set on every read-only session before ``readonly = 1`` locks them."""

    max_execution_time: int = 60
    """Seconds a query may run (wall clock: ``timeout_before_checking_execution_speed = 0``)."""
    max_memory_usage: int = 1 << 30
    """Bytes one query may allocate in the engine (the process also runs the collector)."""
    max_result_bytes: int = 256 << 20
    """Bytes of result blocks a query may produce (results are buffered before sending)."""

    def settings(self) -> dict[str, str]:
        return {
            "max_execution_time": str(self.max_execution_time),
            "timeout_before_checking_execution_speed": "0",
            "timeout_overflow_mode": "throw",
            "max_memory_usage": str(self.max_memory_usage),
            "max_result_bytes": str(self.max_result_bytes),
            "result_overflow_mode": "throw",
        }


def _bad(name: str, value: str, expected: str) -> ClickHouseError:
    return ClickHouseError(
        "BAD_ARGUMENTS", f"meterline: setting {name} must be {expected}, not {value!r}"
    )


def _integer(low: int, high: int) -> Callable[[str, str, Limits], str]:
    def check(name: str, value: str, limits: Limits) -> str:
        if not re.fullmatch(r"\d{1,19}", value.strip()) or not low <= int(value) <= high:
            raise _bad(name, value, f"an integer from {low} to {high}")
        return str(int(value))

    return check


def _lower_than(attribute: str) -> Callable[[str, str, Limits], str]:
    """A limit the client may lower (1..the endpoint's value), never lift (0 = none)."""

    def check(name: str, value: str, limits: Limits) -> str:
        high = getattr(limits, attribute)
        return _integer(1, high)(name, value, limits)

    return check


def _capped(attribute: str) -> Callable[[str, str, Limits], str]:
    """A limit the client may lower; a higher value is held at the endpoint's (0 = none
    is still refused). For ``max_execution_time``, which clickhouse-go sets on every
    query from its context deadline plus 5 s — 64 or 65 under Grafana's plugin's
    default 60 s query timeout — so refusing it would fail every panel."""

    def check(name: str, value: str, limits: Limits) -> str:
        high = getattr(limits, attribute)
        if not re.fullmatch(r"\d{1,19}", value.strip()) or int(value) < 1:
            raise _bad(name, value, f"an integer from 1 (at most {high} applies)")
        return str(min(int(value), high))

    return check


def _choice(*options: str) -> Callable[[str, str, Limits], str]:
    def check(name: str, value: str, limits: Limits) -> str:
        if value.strip().lower() not in options:
            raise _bad(name, value, "one of " + ", ".join(options))
        return value.strip().lower()

    return check


_BOOL = _choice("0", "1", "true", "false")

ALLOWED: Mapping[str, Callable[[str, str, Limits], str]] = {
    # Grafana's plugin: "row limit" and commonly configured custom settings
    "limit": _integer(0, 1 << 62),
    "offset": _integer(0, 1 << 62),
    "max_threads": _integer(0, 64),
    "max_block_size": _integer(1, 1 << 20),
    "max_execution_time": _capped("max_execution_time"),
    "max_memory_usage": _lower_than("max_memory_usage"),
    "max_result_bytes": _lower_than("max_result_bytes"),
    "max_result_rows": _integer(1, 1 << 62),
    "join_use_nulls": _BOOL,
    "extremes": _BOOL,
    "date_time_output_format": _choice("simple", "iso", "unix_timestamp"),
    "output_format_json_quote_64bit_integers": _BOOL,
    "output_format_json_quote_decimals": _BOOL,
    "output_format_json_named_tuples_as_objects": _BOOL,
    "output_format_arrow_string_as_string": _BOOL,
    # clickhouse-connect's connection defaults (sent when the server says they are writable)
    "date_time_input_format": _choice("basic", "best_effort", "best_effort_us"),
    "cast_string_to_dynamic_use_inference": _BOOL,
}
"""Settings a read-only request may set, each with its validator."""


def split(settings: Mapping[str, str], limits: Limits) -> tuple[dict[str, str], dict[str, str]]:
    """``(allowed and validated, everything else)``; the rest is for the engine to refuse.

    Raises:
        ClickHouseError: BAD_ARGUMENTS for an allowed setting with an invalid value,
            UNKNOWN_SETTING for a name that is not an identifier.
    """
    allowed: dict[str, str] = {}
    others: dict[str, str] = {}
    for name, value in settings.items():
        if not _NAME.match(name):
            raise ClickHouseError("UNKNOWN_SETTING", f"Unknown setting {name!r}")
        check = ALLOWED.get(name)
        if check is None:
            others[name] = value
        else:
            allowed[name] = check(name, value, limits)
    return allowed, others
