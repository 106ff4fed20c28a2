"""Google Gemini ``models/{model}:generateContent`` and ``:streamGenerateContent``.

Usage from ``usageMetadata``: ``promptTokenCount`` includes ``cachedContentTokenCount``;
``toolUsePromptTokenCount`` is added to input; Gemini's ``candidatesTokenCount`` EXCLUDES
``thoughtsTokenCount``, so output = candidates + thoughts (reasoning is then a subset, as
everywhere else). Streams (``alt=sse`` or a streamed JSON array) repeat a cumulative
``usageMetadata``; the last one wins. The model comes from the URL path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meterline.instrumentation.shapes._base import (
    RequestFacts,
    Shape,
    add_finish_reason,
    as_int,
    read_identity,
)

if TYPE_CHECKING:
    from meterline.instrumentation._call import Call


class GenerateContent(Shape):
    operation = "generate_content"
    provider = "gcp.gemini"

    def __init__(self, *, stream: bool) -> None:
        self.stream = stream

    def request(
        self, body: dict[str, Any] | None, raw: bytes, path_model: str | None
    ) -> RequestFacts:
        max_tokens = None
        if body is not None:
            config = body.get("generationConfig")
            if isinstance(config, dict):
                max_tokens = as_int(config.get("maxOutputTokens"))
        return RequestFacts(path_model, self.stream, max_tokens)

    def on_json(self, call: Call, data: Any) -> None:
        if isinstance(data, list):
            for item in data:
                self.on_event(call, None, item)
        elif isinstance(data, dict):
            self.on_event(call, None, data)

    def on_event(self, call: Call, name: str | None, data: Any) -> bool:
        if type(data) is not dict:
            return True
        read_identity(call, data, "responseId", "modelVersion")
        for candidate in data.get("candidates") or ():
            if type(candidate) is not dict:
                continue
            add_finish_reason(call, candidate.get("finishReason"))
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts or ():
                text = part.get("text") if type(part) is dict else None
                if isinstance(text, str) and text:
                    call.text_events += 1
                    call.text_chars += len(text)
        usage = data.get("usageMetadata")
        if isinstance(usage, dict):
            _read_usage(call, usage)
            if self.stream and not call.finish_reasons:
                call.usage_final = False  # cumulative counts: final only with the last chunk
        return True


def _read_usage(call: Call, usage: dict[str, Any]) -> None:
    prompt = as_int(usage.get("promptTokenCount"))
    tool = as_int(usage.get("toolUsePromptTokenCount"))
    candidates = as_int(usage.get("candidatesTokenCount"))
    thoughts = as_int(usage.get("thoughtsTokenCount"))
    if prompt is not None or tool is not None:
        call.input = (prompt or 0) + (tool or 0)
        call.input_from_provider = True
    call.cache_read = as_int(usage.get("cachedContentTokenCount"))
    call.output = (candidates or 0) + (thoughts or 0)
    call.reasoning = thoughts
    call.usage_final = call.input is not None


GENERATE = GenerateContent(stream=False)
STREAM_GENERATE = GenerateContent(stream=True)
