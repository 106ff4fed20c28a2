"""Token counts the store does not trust are flagged, never billed, never read as 0.

Each value travels as OTLP would carry it (string, int, double, bool, array, map
AnyValues), through the collector's decode and insert (Python and native paths) into
``otel_traces``; the view decides. Then the API and the invoice must show it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from meterline.aggregator.app import create_app
from meterline.aggregator.invoices import compute_invoices, month
from meterline.aggregator.pricing import Catalogue, load_pricing
from meterline.aggregator.tenancy import Scope
from meterline.collector import native
from meterline.collector.decode import COLUMNS, parse_protobuf, to_rows
from meterline.settings import ServerSettings
from meterline.store import Store
from meterline.store.usage_schema import MAX_TOKENS, SCOPE
from tests.collector.test_native import kvs

AT = 1_772_323_200 * 10**9 + 5 * 86_400 * 10**9  # 2026-03-06T00:00:00Z
INPUT = "gen_ai.usage.input_tokens"
NOT_INT = f"{INPUT}: not a non-negative integer"
TOO_BIG = f"{INPUT}: above {MAX_TOKENS}"

INVALID: list[tuple[Any, str]] = [
    ("abc", NOT_INT),
    ("-5", NOT_INT),
    (-5, NOT_INT),
    (12.7, NOT_INT),
    ("12.7", NOT_INT),
    ("1e6", NOT_INT),
    (1e22, NOT_INT),  # a double the collector renders in exponent form
    (True, NOT_INT),
    ("true", NOT_INT),
    (" 5", NOT_INT),
    ("5 ", NOT_INT),
    ("5\n", NOT_INT),
    ("+5", NOT_INT),
    ("0x10", NOT_INT),
    ("٣", NOT_INT),  # ARABIC-INDIC DIGIT THREE
    ("５", NOT_INT),  # FULLWIDTH DIGIT FIVE
    ("NaN", NOT_INT),
    (float("nan"), NOT_INT),
    ("Infinity", NOT_INT),
    (float("inf"), NOT_INT),
    ("-0", NOT_INT),
    ("1_000", NOT_INT),
    (("1", "2"), NOT_INT),  # an array value
    ({"n": 1}, NOT_INT),  # a map value
    (b"\x05", NOT_INT),  # bytes (base64 text)
    (str(MAX_TOKENS + 1), TOO_BIG),
    (str(2**63 - 1), TOO_BIG),
    (2**63 - 1, TOO_BIG),
    (str(2**64), TOO_BIG),
    (str(2**64 - 1), TOO_BIG),
    ("9" * 40, TOO_BIG),
]

VALID: list[tuple[Any, int]] = [
    ("42", 42),
    (42, 42),
    (42.0, 42),  # an integral double: the collector renders it "42"
    ("0", 0),
    ("007", 7),
    ("0" * 30 + "9", 9),
    (str(MAX_TOKENS), MAX_TOKENS),
    ("", 0),  # empty = not reported
]


def _request(spans: list[tuple[str, dict[str, Any]]]) -> bytes:
    out = []
    for i, (response, attrs) in enumerate(spans, 1):
        base = {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o", "gen_ai.response.id": response,
                "gen_ai.usage.output_tokens": 10, "meterline.consumer.id": "acme"}  # fmt: skip
        out.append(
            Span(
                trace_id=i.to_bytes(16, "big"),
                span_id=i.to_bytes(8, "big"),
                name="chat gpt-4o",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=AT + i,
                end_time_unix_nano=AT + i + 1000,
                attributes=kvs(base | attrs),
            )
        )
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(
            resource=Resource(attributes=kvs({"service.name": "svc"})),
            scope_spans=[ScopeSpans(scope=InstrumentationScope(name=SCOPE), spans=out)],
        )]
    )  # fmt: skip
    return request.SerializeToString()


def _python_path(store: Store, body: bytes) -> None:
    rows = to_rows(parse_protobuf(body))
    assert rows.rejected == 0
    store.insert_columns("otel_traces", rows.columns, COLUMNS)


def _native_path(store: Store, body: bytes) -> None:
    [(_, rejected)] = native.insert_requests(store, [body])
    assert rejected == 0


PATHS: dict[str, Callable[[Store, bytes], None]] = {
    "python": _python_path,
    "native": _native_path,
}


def _rows(store: Store) -> dict[str, dict[str, Any]]:
    rows = store.query_dicts(
        "SELECT ResponseId, InputTokens, UsageError, Billable FROM {db}.llm_usage_counted("
        "start = '2026-03-01 00:00:00', end = '2026-04-01 00:00:00')"
    )
    return {r["ResponseId"]: r for r in rows}


@pytest.mark.parametrize("path", list(PATHS))
def test_each_invalid_count_is_flagged_and_never_billed(store: Store, path: str) -> None:
    spans = [(f"bad{i}", {INPUT: value}) for i, (value, _) in enumerate(INVALID)]
    spans += [(f"ok{i}", {INPUT: value}) for i, (value, _) in enumerate(VALID)]
    PATHS[path](store, _request(spans))
    rows = _rows(store)
    for i, (value, reason) in enumerate(INVALID):
        row = rows[f"bad{i}"]
        assert (row["UsageError"], row["Billable"], row["InputTokens"]) == (reason, 0, 0), value
    for i, (value, tokens) in enumerate(VALID):
        row = rows[f"ok{i}"]
        assert (row["UsageError"], row["Billable"], row["InputTokens"]) == ("", 1, tokens), value

    client = TestClient(create_app(ServerSettings(admin_key="k"), store))
    window = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
    [total] = client.get("/v1/usage", params=window, headers={"authorization": "Bearer k"}).json()[
        "rows"
    ]
    assert total["invalid_requests"] == len(INVALID)
    assert total["failed_requests"] == 0  # invalid is not failed
    assert total["requests"] == len(INVALID) + len(VALID)
    assert total["input_tokens"] == sum(t for _, t in VALID)
    assert total["output_tokens"] == 10 * len(VALID)  # an invalid span's counts are not summed

    pricing = load_pricing(None, catalogue=Catalogue.bundled())
    invoice = compute_invoices(store, pricing, month("2026-03"), scope=Scope.ALL)["acme"]
    assert invoice.invalid_requests == len(INVALID)
    reasons = {u.reason: u.requests for u in invoice.invalid}
    assert reasons == {NOT_INT: sum(r == NOT_INT for _, r in INVALID),
                       TOO_BIG: sum(r == TOO_BIG for _, r in INVALID)}  # fmt: skip
    billed = {x.token_type: x.quantity for x in invoice.lines}
    assert billed["input"] == sum(t for _, t in VALID)
    assert billed["output"] == 10 * len(VALID)
    assert invoice.to_dict()["invalid_requests"] == len(INVALID)


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        ({"gen_ai.usage.output_tokens": "abc"}, "gen_ai.usage.output_tokens: not a non-negative integer"),
        ({"gen_ai.usage.cache_read.input_tokens": "-1"},
         "gen_ai.usage.cache_read.input_tokens: not a non-negative integer"),
        ({"gen_ai.usage.cache_write.input_tokens": "1.5"},
         "gen_ai.usage.cache_creation.input_tokens: not a non-negative integer"),
        ({"meterline.usage.cache_creation_1h.input_tokens": "x"},
         "meterline.usage.cache_creation_1h.input_tokens: not a non-negative integer"),
        ({"gen_ai.usage.reasoning.output_tokens": str(2**64)},
         f"gen_ai.usage.reasoning.output_tokens: above {MAX_TOKENS}"),
        ({INPUT: "", "gen_ai.usage.prompt_tokens": "-3"}, NOT_INT),  # the fallback key too
        ({INPUT: "100", "gen_ai.usage.cache_read.input_tokens": "101"},
         "gen_ai.usage.cache_read + cache_creation.input_tokens: more than input_tokens"),
        ({INPUT: "100", "gen_ai.usage.cache_read.input_tokens": "60",
          "gen_ai.usage.cache_creation.input_tokens": "41"},
         "gen_ai.usage.cache_read + cache_creation.input_tokens: more than input_tokens"),
        ({INPUT: "100", "gen_ai.usage.cache_creation.input_tokens": "10",
          "meterline.usage.cache_creation_1h.input_tokens": "11"},
         "meterline.usage.cache_creation_1h.input_tokens: more than cache_creation"),
        ({"gen_ai.usage.reasoning.output_tokens": "11"},
         "gen_ai.usage.reasoning.output_tokens: more than output_tokens"),
    ],
)  # fmt: skip
def test_every_count_and_subset_is_checked(
    store: Store, attrs: dict[str, Any], reason: str
) -> None:
    _python_path(store, _request([("r", attrs)]))
    assert (_rows(store)["r"]["UsageError"], _rows(store)["r"]["Billable"]) == (reason, 0)


def test_huge_counts_cannot_wrap_a_total(store: Store) -> None:
    """The issue's cases: 2^63-1 tokens (a 6.9-trillion-dollar invoice), three of them
    (a wrapped UInt64 sum), InputTokens = 2^64-1 (a cache-write line of -1)."""
    huge = [(f"h{i}", {INPUT: str(2**63 - 1)}) for i in range(3)]
    huge.append(("max", {INPUT: str(2**64 - 1), "gen_ai.usage.cache_write.input_tokens": "5"}))
    huge.append(("ok", {INPUT: "1000"}))
    _python_path(store, _request(huge))
    pricing = load_pricing(None, catalogue=Catalogue.bundled())
    invoice = compute_invoices(store, pricing, month("2026-03"), scope=Scope.ALL)["acme"]
    assert {x.token_type: x.quantity for x in invoice.lines} == {"input": 1000, "output": 10}
    assert invoice.invalid_requests == 4
    assert all(x.quantity >= 0 for x in invoice.lines)
    assert invoice.total < 1


def test_usage_sums_are_128_bit(store: Store) -> None:
    """Even rows written directly (not through the view) cannot wrap a total."""
    names = ["Timestamp", "ConsumerId", "DedupKey", "InputTokens", "Version"]
    at = datetime(2026, 3, 2, tzinfo=UTC)
    data = [[at] * 3, ["acme"] * 3, ["a", "b", "c"], [2**64 - 1] * 3, [2**127] * 3]
    store.insert_columns("llm_usage", data, names)
    client = TestClient(create_app(ServerSettings(admin_key="k"), store))
    window = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
    [row] = client.get("/v1/usage", params=window, headers={"authorization": "Bearer k"}).json()[
        "rows"
    ]
    assert row["input_tokens"] == 3 * (2**64 - 1)
