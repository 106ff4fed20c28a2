"""OpenAI chat completions and legacy completions (and every OpenAI-compatible server).

Usage: ``prompt_tokens`` already includes ``prompt_tokens_details.cached_tokens`` and
``completion_tokens`` includes ``completion_tokens_details.reasoning_tokens`` — taken as is.
DeepSeek's ``prompt_cache_hit_tokens`` and Groq's ``x_groq.usage`` are understood too.

Streams report usage only when asked (``stream_options.include_usage``). When the app did
not ask, meterline asks, and hides the extra usage-only final chunk (``choices: []``) from
the app, so code indexing ``choices[0]`` keeps working; an app that asked still gets it.
The rewrite also sets ``Accept-Encoding: identity`` on that request so the stream can be
edited without re-compressing (SSE is rarely compressed anyway).
"""

from __future__ import annotations

import json
import re
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

_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'
# Events that must be read: usage, a finish reason, Groq's usage. Quotes inside JSON
# strings are escaped, so these patterns only match real keys.
_NOTABLE = re.compile(rb'"usage": ?\{|"finish_reason": ?"|"x_groq"')
_LEADING_BRACE = re.compile(rb"^\s*\{\s*")


def read_usage(call: Call, usage: dict[str, Any]) -> None:
    """Copy an OpenAI ``usage`` object onto the call (chat, completions, embeddings)."""
    call.input = as_int(usage.get("prompt_tokens"))
    out = as_int(usage.get("completion_tokens"))
    call.output = out if out is not None else (0 if call.input is not None else None)
    details = usage.get("prompt_tokens_details")
    cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else None
    if cached is None:
        cached = as_int(usage.get("prompt_cache_hit_tokens"))
    call.cache_read = cached
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict):
        call.reasoning = as_int(details.get("reasoning_tokens"))
    call.usage_final = call.input is not None


class ChatCompletions(Shape):
    operation = "chat"
    provider = "openai"

    def request(
        self, body: dict[str, Any] | None, raw: bytes, path_model: str | None
    ) -> RequestFacts:
        facts = super().request(body, raw, path_model)
        if not facts.stream:
            return facts
        if body is not None:
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage") is True:
                return facts  # the app asked: it gets the usage chunk
            if options is None and b'"stream_options"' not in raw:
                new = _inject(raw)
            else:
                merged = dict(options) if isinstance(options, dict) else {}
                merged["include_usage"] = True
                new = json.dumps({**body, "stream_options": merged}).encode()
        elif b'"stream_options"' in raw:
            return facts  # large body that already says something about usage: leave it
        else:
            new = _inject(raw)
        if new is None:
            return facts
        return facts._replace(body=new, strip=True)

    def on_json(self, call: Call, data: Any) -> None:
        if not isinstance(data, dict):
            return
        read_identity(call, data)
        for choice in data.get("choices") or ():
            if isinstance(choice, dict):
                add_finish_reason(call, choice.get("finish_reason"))
        usage = data.get("usage")
        if isinstance(usage, dict):
            read_usage(call, usage)

    def skim(self, call: Call, block: bytes, sep: bytes) -> bool:
        # Plain deltas (the bulk of a stream) are only counted: OpenAI-style servers send
        # about one token per event, which is what a cut-short estimate needs.
        if call.response_id is None or _NOTABLE.search(block) is not None:
            return False
        call.text_events += block.count(sep) + 1
        return True

    def on_event(self, call: Call, name: str | None, data: Any) -> bool:
        if not isinstance(data, dict):
            return True
        if call.response_id is None:
            read_identity(call, data)
        choices = data.get("choices")
        if choices:
            for choice in choices:
                if type(choice) is not dict:
                    continue
                reason = choice.get("finish_reason")
                if reason:
                    add_finish_reason(call, reason)
                text = self._text(choice)
                if text:
                    call.text_events += 1
                    call.text_chars += len(text)
        usage = data.get("usage")
        if usage is None:
            extra = data.get("x_groq")
            usage = extra.get("usage") if isinstance(extra, dict) else None
        if isinstance(usage, dict):
            read_usage(call, usage)
            if call.strip and not choices:
                return False
        return True

    def _text(self, choice: dict[str, Any]) -> Any:
        delta = choice.get("delta")
        if type(delta) is not dict:
            return None
        text = delta.get("content")
        if not text:
            text = delta.get("reasoning_content") or delta.get("reasoning")
            if not text and delta.get("tool_calls"):
                text = json.dumps(delta["tool_calls"])
        return text if isinstance(text, str) else None


class Completions(ChatCompletions):
    """Legacy ``/v1/completions``: the same usage; text in ``choices[].text``."""

    operation = "text_completion"

    def _text(self, choice: dict[str, Any]) -> Any:
        text = choice.get("text")
        return text if isinstance(text, str) else None


def _inject(raw: bytes) -> bytes | None:
    """Ask for usage by prefixing the body's top-level object; None if it is not one."""
    m = _LEADING_BRACE.match(raw)
    if m is None or raw[m.end() : m.end() + 1] == b"}":
        return None
    return b"{" + _INCLUDE_USAGE + raw[m.end() :]


CHAT = ChatCompletions()
COMPLETIONS = Completions()
