"""OpenAI Responses API (``POST …/responses``).

Usage: ``input_tokens`` includes ``input_tokens_details.cached_tokens``; ``output_tokens``
includes ``output_tokens_details.reasoning_tokens``. Streams always carry usage, in the
final ``response.completed`` (or ``response.incomplete`` / ``response.failed``) event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meterline.instrumentation.shapes._base import (
    Shape,
    add_finish_reason,
    as_int,
    count_text,
    read_identity,
)

if TYPE_CHECKING:
    from meterline.instrumentation._call import Call

_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_TEXT_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.refusal.delta",
    }
)


class Responses(Shape):
    operation = "chat"
    provider = "openai"

    def on_json(self, call: Call, data: Any) -> None:
        if isinstance(data, dict):
            _read_response(call, data)

    def on_raw_event(self, call: Call, name: str | None, data: bytes) -> bool:
        if name in _TEXT_EVENTS:  # the bulk of a stream: counted, not parsed
            count_text(call, data, b'"delta":')
            return True
        return super().on_raw_event(call, name, data)

    def on_event(self, call: Call, name: str | None, data: Any) -> bool:
        if type(data) is not dict:
            return True
        kind = data.get("type")
        if kind in _TEXT_EVENTS:
            delta = data.get("delta")
            if isinstance(delta, str):
                call.text_events += 1
                call.text_chars += len(delta)
        elif kind in _FINAL_EVENTS or kind == "response.created":
            response = data.get("response")
            if isinstance(response, dict):
                _read_response(call, response)
        elif kind == "error":
            call.error = str(data.get("code") or "error")
        return True


def _read_response(call: Call, response: dict[str, Any]) -> None:
    read_identity(call, response)
    status = response.get("status")
    if status == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        add_finish_reason(call, reason or "incomplete")
    elif status in ("completed", "failed", "cancelled"):
        add_finish_reason(call, status)
    if status == "failed":
        error = response.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        call.error = str(code or "failed")
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return
    call.input = as_int(usage.get("input_tokens"))
    call.output = as_int(usage.get("output_tokens"))
    details = usage.get("input_tokens_details")
    if isinstance(details, dict):
        call.cache_read = as_int(details.get("cached_tokens"))
    details = usage.get("output_tokens_details")
    if isinstance(details, dict):
        call.reasoning = as_int(details.get("reasoning_tokens"))
    call.usage_final = call.input is not None or call.output is not None


RESPONSES = Responses()
