"""Test support: LLM calls written as spans into ``otel_traces`` (the view fills
``llm_usage``), with the span attributes of docs/attributes.md."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime

from meterline.store import Store

_ids = itertools.count(1)


@dataclass(frozen=True)
class Call:
    """One LLM call as the instrumentation reports it (normalised counts)."""

    at: datetime
    consumer: str = "acme"
    provider: str = "openai"
    model: str = "gpt-4o"
    response_model: str | None = None
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    cache_creation_1h: int = 0
    reasoning: int = 0
    error: str | None = None
    response_id: str | None = None
    feature: str | None = None
    reservation_id: str | None = None
    """``meterline.budget.reservation_id``: the call was reserved against budgets."""
    attributes: tuple[tuple[str, str], ...] = ()
    """More span attributes, set last (they may replace the ones above)."""


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def _attributes(call: Call, response_id: str) -> dict[str, str]:
    attrs = {
        "gen_ai.provider.name": call.provider,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": call.model,
        "gen_ai.response.model": call.response_model or call.model,
        "gen_ai.response.id": response_id,
        "gen_ai.usage.input_tokens": str(call.input),
        "gen_ai.usage.output_tokens": str(call.output),
        "meterline.consumer.id": call.consumer,
    }
    optional = {
        "gen_ai.usage.cache_read.input_tokens": call.cache_read,
        "gen_ai.usage.cache_creation.input_tokens": call.cache_creation,
        "meterline.usage.cache_creation_1h.input_tokens": call.cache_creation_1h,
        "gen_ai.usage.reasoning.output_tokens": call.reasoning,
    }
    attrs.update({k: str(v) for k, v in optional.items() if v})
    if call.feature is not None:
        attrs["meterline.feature"] = call.feature
    if call.reservation_id is not None:
        attrs["meterline.budget.reservation_id"] = call.reservation_id
    if call.error:
        attrs["error.type"] = call.error
        attrs["http.response.status_code"] = call.error if call.error.isdigit() else "500"
    else:
        attrs["http.response.status_code"] = "200"
    attrs.update(call.attributes)
    return attrs


def insert_calls(store: Store, calls: list[Call]) -> None:
    """Write ``calls`` as GenAI client spans (one insert)."""
    names = (
        "Timestamp", "TraceId", "SpanId", "SpanName", "SpanKind", "ServiceName",
        "SpanAttributes", "StatusCode", "Duration",
    )  # fmt: skip
    rows = []
    for call in calls:
        n = next(_ids)
        response_id = call.response_id or f"resp-{n}"
        rows.append(
            (
                call.at,
                f"{n:032x}",
                f"{n:016x}",
                f"chat {call.model}",
                "SPAN_KIND_CLIENT",
                "svc",
                _attributes(call, response_id),
                "STATUS_CODE_ERROR" if call.error else "STATUS_CODE_UNSET",
                1,
            )
        )
    store.insert_columns("otel_traces", [list(c) for c in zip(*rows, strict=True)], names)
