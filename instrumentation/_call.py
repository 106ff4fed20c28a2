"""One metered LLM call: its span, what the response said, and how it ends.

Contract: a :class:`Call` is created when an LLM request is sent and ends its span exactly
once — when the response body is exhausted, closed, fails, or (for non-2xx and bodies we
do not parse) as soon as the headers arrive. Everything here is defensive: a parsing
problem turns the call into a pass-through with whatever is known, never an exception in
the app.

Calls still in flight when the process is about to die (a stop signal with the default
action, interpreter exit) are ended by :func:`interrupt_in_flight`, so their usage is not
lost: after a 2xx as a stream cut short (an estimate, ``meterline.usage.estimated``);
before any answer as a failed call (stored, not billed: the provider may never have seen
it); both flagged ``meterline.call.interrupted``.

The body is inspected as it passes: JSON bodies are kept as the transport's own chunks
(no copy until the single join at the end), SSE bodies are split into events as they
arrive and handed to the API shape's parser one event at a time.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, Status, StatusCode

from meterline.instrumentation import _estimate

if TYPE_CHECKING:
    from meterline.instrumentation.shapes._base import Shape

logger = logging.getLogger(__name__)

_MODE_NONE = 0
_MODE_JSON = 1
_MODE_SSE = 2

# A JSON response above this size is not parsed whole: only its tail, where OpenAI-style
# embeddings put ``model`` and ``usage`` (avoids parsing megabytes of vectors).
_MAX_JSON_PARSE = 1 << 20
INTERRUPTED = "meterline.interrupted"
RESERVATION_ID = "meterline.budget.reservation_id"
DEGRADED = "meterline.budget.degraded"

_in_flight: weakref.WeakSet[Call] = weakref.WeakSet()


def interrupt_in_flight() -> int:
    """End every call still in flight (the process is about to die); returns how many."""
    for _ in range(3):  # another thread may start or end a call meanwhile
        try:
            calls = list(_in_flight)
            break
        except RuntimeError:
            continue
    else:
        return 0
    ended = 0
    for call in calls:
        if call.done:
            continue
        call.interrupted = True
        if not call.status:
            call.error = INTERRUPTED
        call.finish(complete=False)
        ended += 1
    return ended


def error_type(exc: BaseException) -> str:
    """``error.type`` for an exception: its qualified class name."""
    cls = type(exc)
    module = cls.__module__
    if module.startswith(("httpx2.", "httpx.")):
        module = module.split(".", 1)[0]
    return f"{module}.{cls.__qualname__}"


class Ticket:
    """A call's budget reservation: settled or released when the call ends."""

    __slots__ = ("guard", "model", "rid")

    def __init__(self, guard: Any, rid: str, model: str | None) -> None:
        self.guard = guard
        self.rid = rid
        self.model = model


class Call:
    """State of one LLM call from request to the end of its response body."""

    __slots__ = (
        "__weakref__",
        "_buf",
        "_chunks",
        "_decoder",
        "_mode",
        "_sep",
        "cache_creation",
        "cache_creation_1h",
        "cache_read",
        "done",
        "error",
        "finish_reasons",
        "input",
        "input_from_provider",
        "interrupted",
        "output",
        "reasoning",
        "request_bytes",
        "response_id",
        "response_model",
        "shape",
        "span",
        "status",
        "strip",
        "text_chars",
        "text_events",
        "ticket",
        "usage_final",
    )

    def __init__(
        self,
        shape: Shape,
        span: Span,
        request_bytes: int,
        strip: bool,
        ticket: Ticket | None = None,
    ) -> None:
        self.ticket = ticket
        self.shape = shape
        self.span = span
        self.request_bytes = request_bytes
        self.strip = strip
        self.done = False
        self.interrupted = False
        self.status = 0
        self.error: str | None = None
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.finish_reasons: list[str] | None = None
        self.input: int | None = None
        self.output: int | None = None
        self.cache_read: int | None = None
        self.cache_creation: int | None = None
        self.cache_creation_1h: int | None = None
        self.reasoning: int | None = None
        self.usage_final = False
        self.input_from_provider = False
        self.text_chars = 0
        self.text_events = 0
        self._mode = _MODE_NONE
        self._buf = b""
        self._sep = b"\n\n"
        self._chunks: list[bytes] | None = None
        self._decoder: Any = None
        _in_flight.add(self)

    # -- response headers -------------------------------------------------------------

    def on_headers(
        self,
        status: int,
        content_type: str,
        content_encoding: str,
        decoders: Callable[[str], Any] | None,
    ) -> bool:
        """Record the status; return True when the body must be watched."""
        self.status = status
        if status < 200 or status >= 300:
            self.error = str(status)
            return False
        if "event-stream" in content_type:
            self._mode = _MODE_SSE
        elif "json" in content_type:
            self._mode = _MODE_JSON
            self._chunks = []
        else:
            return False
        if content_encoding and content_encoding != "identity":
            if self.strip:
                # Rewriting compressed bytes is not worth it: pass them through untouched.
                self.strip = False
            self._decoder = decoders(content_encoding) if decoders else None
            if self._decoder is None:
                self._mode = _MODE_NONE
                return False
        return True

    # -- body -------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        """Inspect one raw body chunk; return the bytes the app should read."""
        if self._mode == _MODE_JSON:
            self._chunks.append(chunk)  # type: ignore[union-attr]
            return chunk
        if self._mode != _MODE_SSE:
            return chunk
        try:
            return self._feed_sse(chunk)
        except Exception:
            logger.debug("meterline: stream parsing failed, passing through", exc_info=True)
            self._mode = _MODE_NONE
            pending, self._buf = self._buf, b""
            return pending + chunk if self.strip else chunk

    def _feed_sse(self, chunk: bytes) -> bytes:
        data = chunk
        if self._decoder is not None:
            data = self._decoder.decode(chunk)
        buf = self._buf + data if self._buf else data
        if b"\r" in buf and self._sep == b"\n\n":
            self._sep = b"\r\n\r\n" if b"\r\n" in buf else b"\r\r"
        sep = self._sep
        end = buf.rfind(sep)
        if end < 0:
            self._buf = buf
            return b"" if self.strip else chunk
        cut = end + len(sep)
        self._buf = buf[cut:]
        complete = buf[:end]
        if self.shape.skim(self, complete, sep):
            return buf[:cut] if self.strip else chunk
        events = complete.split(sep)
        on_event = self.shape.on_raw_event
        if not self.strip:
            for raw in events:
                if raw:
                    self._event(raw, on_event)
            return chunk
        dropped = False
        kept: list[bytes] = []
        for raw in events:
            if raw and not self._event(raw, on_event):
                dropped = True
            else:
                kept.append(raw)
        if not dropped:
            return buf[:cut]
        return b"".join(raw + sep for raw in kept)

    def _event(self, raw: bytes, on_event: Callable[[Call, str | None, bytes], bool]) -> bool:
        """Split one SSE event into name and data; return False to drop it."""
        name: str | None = None
        if raw.startswith(b"data: ") and b"\n" not in raw:
            data = raw[6:]
        else:
            parts: list[bytes] = []
            for line in raw.splitlines():
                if line.startswith(b"data:"):
                    parts.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    name = line[6:].strip().decode("utf-8", "replace")
            if not parts:
                return True
            data = b"\n".join(parts)
        if not data or data[:1] not in b"{[":
            return True
        return on_event(self, name, data)

    def end_of_body(self) -> bytes:
        """The body was read to its end: parse what is held; return bytes still owed."""
        tail = b""
        try:
            if self._mode == _MODE_JSON:
                self._parse_json()
            elif self._mode == _MODE_SSE:
                pending, self._buf = self._buf, b""
                if self._decoder is not None:
                    pending += self._decoder.flush()
                if pending.strip():  # a last event without its blank line
                    self._event(pending.strip(), self.shape.on_raw_event)
                if self.strip:
                    tail = pending
        except Exception:
            logger.debug("meterline: response parsing failed", exc_info=True)
        self._mode = _MODE_NONE
        return tail

    def _parse_json(self) -> None:
        chunks = self._chunks or []
        self._chunks = None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self._decoder is not None:
            body = self._decoder.decode(body) + self._decoder.flush()
        if not body:
            return
        if len(body) > _MAX_JSON_PARSE:
            self.shape.on_large_json(self, body)
            return
        try:
            data = json.loads(body)
        except ValueError:
            return
        self.shape.on_json(self, data)

    # -- end ----------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """The request or the body failed with ``exc`` (re-raised by the caller)."""
        if not self.done:
            if isinstance(exc, Exception):
                self.error = error_type(exc)
            self.finish(complete=False)

    def finish(self, *, complete: bool) -> None:
        """End the span once; ``complete`` is False when the body was not fully read."""
        if self.done:
            return
        self.done = True
        _in_flight.discard(self)
        try:
            self._end()
        except Exception:
            logger.debug("meterline: could not finish the span", exc_info=True)
            try:
                self.span.end()
            except Exception:
                logger.debug("meterline: could not end the span", exc_info=True)

    def _end(self) -> None:
        attrs: dict[str, Any] = {}
        if self.status:
            attrs["http.response.status_code"] = self.status
        if self.response_id:
            attrs["gen_ai.response.id"] = self.response_id
        if self.response_model:
            attrs["gen_ai.response.model"] = self.response_model
        if self.finish_reasons:
            attrs["gen_ai.response.finish_reasons"] = self.finish_reasons
        metered = True
        if not self.usage_final:
            if self.error is None or 200 <= self.status < 300:
                # Cut short after a 2xx (or the server sent no usage): the provider has
                # worked on the request; record what is known, as an estimate.
                self._estimate()
                attrs["meterline.usage.estimated"] = True
            else:
                # A failed call is stored (not billed): zero tokens is the truth for it.
                metered = False
                self.input = self.input or 0
                self.output = self.output or 0
        self._usage_attrs(attrs)
        if self.interrupted:
            attrs["meterline.call.interrupted"] = True
        span = self.span
        if self.error is not None:
            attrs["error.type"] = self.error
            span.set_attributes(attrs)
            span.set_status(Status(StatusCode.ERROR))
        else:
            span.set_attributes(attrs)
        span.end()
        if self.ticket is not None:
            self._settle(self.ticket, metered)

    def _settle(self, ticket: Ticket, metered: bool) -> None:
        """Replace the reservation by what was metered, or release it (no usage)."""
        if not metered:
            ticket.guard.release(ticket.rid)
            return
        total_in = self.input or 0
        total_out = self.output or 0
        read = min(self.cache_read or 0, total_in)
        usage = {
            "input": total_in,
            "output": total_out,
            "cache_read": read,
            "cache_write": min(self.cache_creation or 0, total_in - read),
            "reasoning": min(self.reasoning or 0, total_out),
        }
        ticket.guard.settle(
            ticket.rid, usage, model=ticket.model, response_id=self.response_id,
            estimated=not self.usage_final,
        )  # fmt: skip

    def _estimate(self) -> None:
        if not self.input_from_provider or self.input is None:
            self.input = _estimate.input_tokens(self.request_bytes)
        if self.shape.operation == "embeddings":
            self.output = self.output or 0
        else:
            self.output = max(
                self.output or 0, _estimate.output_tokens(self.text_chars, self.text_events)
            )

    def _usage_attrs(self, attrs: dict[str, Any]) -> None:
        if self.input is not None:
            attrs["gen_ai.usage.input_tokens"] = self.input
        if self.output is not None:
            attrs["gen_ai.usage.output_tokens"] = self.output
        if self.cache_read:
            attrs["gen_ai.usage.cache_read.input_tokens"] = self.cache_read
        if self.cache_creation:
            attrs["gen_ai.usage.cache_creation.input_tokens"] = self.cache_creation
        if self.cache_creation_1h:
            attrs["meterline.usage.cache_creation_1h.input_tokens"] = self.cache_creation_1h
        if self.reasoning:
            attrs["gen_ai.usage.reasoning.output_tokens"] = self.reasoning
