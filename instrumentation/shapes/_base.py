"""The interface every API shape implements, and helpers they share.

A shape is a stateless singleton: per-call state lives on :class:`~.._call.Call`. A shape
reads the request (model, stream flag, max tokens), may rewrite a streamed request so the
provider reports usage, and reads usage from a JSON body or from stream events.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from meterline.instrumentation._call import Call


class RequestFacts(NamedTuple):
    """What the request says, read before the span starts."""

    model: str | None
    stream: bool
    max_tokens: int | None
    body: bytes | None = None
    """The rewritten request body, when the shape had to ask for usage."""
    strip: bool = False
    """Whether usage-only stream events must be hidden from the app (meterline asked)."""


_MODEL_RE = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')


def scan_large(raw: bytes) -> tuple[str | None, bool]:
    """Model and stream flag of a body too large to parse whole (first match wins).

    Known limit: a nested ``"model": "…"`` key before the top-level one would be taken.
    """
    m = _MODEL_RE.search(raw)
    model = m.group(1).decode("utf-8", "replace") if m else None
    return model, _STREAM_RE.search(raw) is not None


def as_int(value: Any) -> int | None:
    """``value`` if it is a (non-bool) int, else None."""
    return value if type(value) is int else None


class Shape:
    """Base class: override what the API shape needs."""

    operation = "chat"
    provider = "openai"

    def request(
        self, body: dict[str, Any] | None, raw: bytes, path_model: str | None
    ) -> RequestFacts:
        if body is None:
            model, stream = scan_large(raw) if raw else (None, False)
            return RequestFacts(model or path_model, stream, None)
        model = body.get("model")
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_completion_tokens", body.get("max_output_tokens"))
        return RequestFacts(
            model if isinstance(model, str) else path_model,
            body.get("stream") is True,
            as_int(max_tokens),
        )

    def on_json(self, call: Call, data: Any) -> None:
        """A whole (non-streamed) JSON response body."""

    def on_large_json(self, call: Call, body: bytes) -> None:
        """A JSON body too large to parse whole; default: give up (estimated)."""

    def skim(self, call: Call, block: bytes, sep: bytes) -> bool:
        """Account for a block of whole SSE events without splitting them, if possible.

        Returns True when nothing in ``block`` needs reading event by event.
        """
        return False

    def on_raw_event(self, call: Call, name: str | None, data: bytes) -> bool:
        """One SSE event's raw data; shapes skip parsing events they can read cheaply."""
        try:
            obj = json.loads(data)
        except ValueError:
            return True
        return self.on_event(call, name, obj)

    def on_event(self, call: Call, name: str | None, data: Any) -> bool:
        """One SSE event's JSON data; return False to hide the event from the app."""
        return True


def count_text(call: Call, data: bytes, *keys: bytes) -> None:
    """Count one text-bearing event without parsing it; ``keys`` like ``b'"text":'``.

    The length is the JSON-escaped byte length up to the next quote (an escaped quote
    ends it early): good enough for the estimate of a cut-short stream, and far cheaper
    than parsing the event.
    """
    for key in keys:
        start = data.find(key)
        if start < 0:
            continue
        start += len(key)
        if data[start : start + 1] == b" ":
            start += 1
        if data[start : start + 1] != b'"':
            continue
        end = data.find(b'"', start + 1)
        if end > start + 1:
            call.text_events += 1
            call.text_chars += end - start - 1
            return


def read_identity(
    call: Call, data: dict[str, Any], id_key: str = "id", model_key: str = "model"
) -> None:
    """Take the response id and the model the provider reported, when present."""
    rid = data.get(id_key)
    if isinstance(rid, str) and rid:
        call.response_id = rid
    model = data.get(model_key)
    if isinstance(model, str) and model:
        call.response_model = model


def add_finish_reason(call: Call, reason: Any) -> None:
    """Record a finish reason once, in order of arrival."""
    if isinstance(reason, str) and reason:
        reasons = call.finish_reasons
        if reasons is None:
            call.finish_reasons = [reason]
        elif reason not in reasons:
            reasons.append(reason)
