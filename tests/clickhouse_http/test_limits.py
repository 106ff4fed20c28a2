"""A read-only query cannot exhaust the process: time, memory and result size are bounded by
the engine, with limits set before ``readonly = 1`` so the query cannot lift them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.clickhouse_http.conftest import PASSWORD, Endpoint, _endpoint

if TYPE_CHECKING:
    from meterline.store import Store

AUTH = ("meterline", PASSWORD)


@pytest.fixture(scope="module")
def limited(ch_store: Store) -> Iterator[Endpoint]:
    from meterline.clickhouse_http._settings import Limits

    limits = Limits(max_execution_time=1, max_memory_usage=64 << 20, max_result_bytes=1 << 20)
    yield from _endpoint(ch_store, password=PASSWORD, limits=limits)


def ask(ep: Endpoint, sql: str, **params: str) -> httpx.Response:
    return httpx.post(ep.url, params=params, content=sql.encode(), auth=AUTH, timeout=60)


@pytest.mark.parametrize(
    ("sql", "params", "code"),
    [
        ("SELECT count() FROM system.numbers", {}, "159"),  # never ends: TIMEOUT_EXCEEDED
        ("SELECT sum(sleepEachRow(0.5)) FROM numbers(10)", {"max_block_size": "1"}, "159"),
        ("SELECT count() FROM numbers(10000000000)", {}, "159"),
        ("SELECT length(groupArray(number)) FROM numbers(50000000)", {}, "241"),  # memory
        ("SELECT uniqExact(toString(number)) FROM numbers(20000000)", {}, "241"),
        ("SELECT repeat('x', 1000) FROM numbers(100000)", {}, "241|396"),  # 100 MB of result
        ("SELECT * FROM system.numbers LIMIT 10000000", {}, "396"),
        # the limits cannot be lifted, in the URL or in SETTINGS
        ("SELECT count() FROM system.numbers", {"max_execution_time": "0"}, "36"),
        ("SELECT count() FROM system.numbers", {"max_execution_time": "3600"}, "159"),  # held
        ("SELECT 1 SETTINGS max_execution_time = 0", {}, "164"),
        ("SELECT 1 SETTINGS max_memory_usage = 0", {}, "164"),
        ("SELECT 1 SETTINGS max_result_bytes = 0", {}, "164"),
        ("SELECT 1 SETTINGS result_overflow_mode = 'break'", {}, "164"),
        ("SELECT 1 SETTINGS timeout_overflow_mode = 'break'", {}, "164"),
        ("SELECT 1", {"timeout_before_checking_execution_speed": "10"}, "164"),
    ],
)
def test_runaway_queries_get_an_error(
    limited: Endpoint, sql: str, params: dict[str, str], code: str
) -> None:
    started = time.monotonic()
    response = ask(limited, sql, **params)
    assert response.status_code >= 400, response.text[:300]
    assert response.headers["X-ClickHouse-Exception-Code"] in code.split("|"), response.text[:300]
    assert time.monotonic() - started < 20


def test_a_limit_can_be_lowered(limited: Endpoint) -> None:
    assert ask(limited, "SELECT getSetting('max_result_bytes')").text == f"{1 << 20}\n"
    lowered = ask(limited, "SELECT getSetting('max_result_bytes')", max_result_bytes="1000")
    assert lowered.text == "1000\n"
    over = ask(
        limited, "SELECT number FROM numbers(100000)", max_result_bytes="1000", max_block_size="100"
    )
    assert over.headers["X-ClickHouse-Exception-Code"] == "396"


def test_grafanas_time_limit_is_held_at_the_endpoints(limited: Endpoint) -> None:
    """Grafana's plugin (clickhouse-go) sends ``max_execution_time`` = its query timeout
    + 5 s on every query (65 by default): the query runs, under the endpoint's limit."""
    for sent in ("65", "64", "1000000"):
        r = ask(limited, "SELECT getSetting('max_execution_time')", max_execution_time=sent)
        assert (r.status_code, r.text) == (200, "1\n"), r.text


def test_the_default_limits(readonly: Endpoint) -> None:
    from meterline.clickhouse_http._settings import Limits

    response = ask(
        readonly,
        "SELECT getSetting('max_execution_time'), getSetting('max_memory_usage'), "
        "getSetting('max_result_bytes'), getSetting('readonly')",
    )
    defaults = Limits()
    assert response.text.split() == [
        str(defaults.max_execution_time),
        str(defaults.max_memory_usage),
        str(defaults.max_result_bytes),
        "1",
    ]


def test_the_default_memory_limit_stops_a_greedy_query(readonly: Endpoint) -> None:
    """About 1.6 GB of array for one query: the default endpoint refuses it (1 GiB)."""
    response = ask(readonly, "SELECT length(groupArray(number)) FROM numbers(200000000)")
    assert response.headers.get("X-ClickHouse-Exception-Code") == "241", response.text[:300]


def test_writable_requests_are_not_limited(writable: Endpoint) -> None:
    response = ask(writable, "SELECT getSetting('max_execution_time'), getSetting('readonly')")
    assert response.text == "0\t0\n"
