"""Anthropic Messages (``POST …/v1/messages``).

Anthropic's ``input_tokens`` EXCLUDES cache reads and writes; meterline normalises:
input = input_tokens + cache_read_input_tokens + cache_creation_input_tokens. 1-hour cache
writes (``usage.cache_creation.ephemeral_1h_input_tokens``) are also reported on their own
as ``meterline.usage.cache_creation_1h.input_tokens`` (a subset of cache creation).

Streams: ``message_start.message.usage`` has the input and cache counts,
``message_delta.usage`` the final (cumulative) output count — and, on newer API
versions, updated input counts, which win. An ``error`` event mid-stream sets
``error.type`` to the error's type.
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


def read_usage(call: Call, usage: dict[str, Any], *, final: bool) -> None:
    """Copy an Anthropic ``usage`` object onto the call, normalising input."""
    base = as_int(usage.get("input_tokens"))
    read = as_int(usage.get("cache_read_input_tokens"))
    write = as_int(usage.get("cache_creation_input_tokens"))
    if base is not None or read is not None or write is not None:
        call.input = (base or 0) + (read or 0) + (write or 0)
        call.cache_read = read
        call.cache_creation = write
        call.input_from_provider = True
        breakdown = usage.get("cache_creation")
        if isinstance(breakdown, dict):
            call.cache_creation_1h = as_int(breakdown.get("ephemeral_1h_input_tokens"))
    out = as_int(usage.get("output_tokens"))
    if out is not None:
        call.output = out
    details = usage.get("output_tokens_details")
    if isinstance(details, dict):
        thinking = as_int(details.get("thinking_tokens"))
        if thinking is not None:
            call.reasoning = thinking
    if final and call.input is not None and call.output is not None:
        call.usage_final = True


class Messages(Shape):
    operation = "chat"
    provider = "anthropic"

    def on_json(self, call: Call, data: Any) -> None:
        if not isinstance(data, dict):
            return
        read_identity(call, data)
        add_finish_reason(call, data.get("stop_reason"))
        usage = data.get("usage")
        if isinstance(usage, dict):
            read_usage(call, usage, final=True)

    def on_raw_event(self, call: Call, name: str | None, data: bytes) -> bool:
        if name == "content_block_delta":  # the bulk of a stream: counted, not parsed
            count_text(call, data, b'"text":', b'"thinking":', b'"partial_json":')
            return True
        return super().on_raw_event(call, name, data)

    def on_event(self, call: Call, name: str | None, data: Any) -> bool:
        if type(data) is not dict:
            return True
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta")
            if type(delta) is dict:
                text = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
                if isinstance(text, str) and text:
                    call.text_events += 1
                    call.text_chars += len(text)
        elif kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                read_identity(call, message)
                usage = message.get("usage")
                if isinstance(usage, dict):
                    read_usage(call, usage, final=False)
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                add_finish_reason(call, delta.get("stop_reason"))
            usage = data.get("usage")
            if isinstance(usage, dict):
                read_usage(call, usage, final=True)
        elif kind == "error":
            error = data.get("error")
            etype = error.get("type") if isinstance(error, dict) else None
            call.error = str(etype or "error")
        return True


MESSAGES = Messages()
