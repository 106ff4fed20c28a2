"""The httpx / httpx2 hook: one GenAI span per LLM request the app sends.

``Client.send`` and ``AsyncClient.send`` are wrapped at class level, so clients created
before or after instrumenting are covered, whatever their transport (including
``MockTransport``); an SDK's retry is a new ``send``, hence its own span. Non-LLM requests
cost one method check and a few ``str.endswith``.

For an LLM request the wrapper sends with ``stream=True`` and swaps the response's raw
byte stream for one that inspects the body as the app reads it, then — if the caller
asked for ``stream=False`` — reads the body exactly as httpx would. The span ends when the
body is exhausted, closed or fails; the app sees the same bytes (minus the usage-only chunk
meterline itself asked for), the same response object and the same exceptions.

Our span is not made current: the app's own trace (and its sampling) is left as it was.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from opentelemetry.trace import SpanKind, Tracer, get_current_span

from meterline.errors import BudgetExceeded, RateLimited
from meterline.instrumentation import attribution
from meterline.instrumentation._call import DEGRADED, RESERVATION_ID, Call, Ticket
from meterline.instrumentation.providers import ProviderResolver
from meterline.instrumentation.shapes import RequestFacts, Shape, route

logger = logging.getLogger(__name__)

_MAX_REQUEST_PARSE = 1 << 20
_MARK = "_meterline_facts"
# Operations of a span that reports the same response as ours (an SDK's own GenAI span).
GUARD_REFUSALS = (BudgetExceeded, RateLimited)
_SAME_CALL_OPERATIONS = frozenset({"chat", "text_completion", "embeddings", "generate_content"})


class Meter:
    """What a running instrumentation needs per call (``guard``: the budget guard, if on)."""

    def __init__(self, tracer: Tracer, providers: ProviderResolver, guard: Any = None) -> None:
        self.tracer = tracer
        self.providers = providers
        self.guard = guard


class Library:
    """httpx or httpx2: its stream base classes and decoders, and our wrappers for them."""

    def __init__(self, module: Any) -> None:
        self.name: str = module.__name__
        self.module = module
        self.byte_stream = module.ByteStream
        decoders = importlib.import_module(f"{self.name}._decoders")
        self._decoders: dict[str, Any] = dict(getattr(decoders, "SUPPORTED_DECODERS", {}))
        self.sync_stream = _sync_stream_class(module.SyncByteStream)
        self.async_stream = _async_stream_class(module.AsyncByteStream)

    def decoder(self, encoding: str) -> Any:
        cls = self._decoders.get(encoding.strip().lower())
        return _BytesDecoder(cls()) if cls is not None else None


class _BytesDecoder:
    """httpx decoders return bytes, httpx2's return iterators of bytes: always bytes."""

    __slots__ = ("_decoder",)

    def __init__(self, decoder: Any) -> None:
        self._decoder = decoder

    def decode(self, data: bytes) -> bytes:
        out = self._decoder.decode(data)
        return out if isinstance(out, bytes) else b"".join(out)

    def flush(self) -> bytes:
        out = self._decoder.flush()
        return out if isinstance(out, bytes) else b"".join(out)


class Prepared(NamedTuple):
    """An LLM request, read (and possibly rewritten to ask for usage) but not yet sent."""

    shape: Shape
    facts: RequestFacts
    raw: bytes
    provider: str
    consumer_id: str | None
    feature: str | None


def prepare(meter: Meter, lib: Library, request: Any) -> Prepared | None:
    """The :class:`Prepared` request when ``request`` is an LLM call, else None."""
    if request.method != "POST":
        return None
    url = request.url
    found = route(url.path)
    if found is None:
        return None
    shape, path_model = found
    raw = getattr(request, "_content", None)
    if not isinstance(raw, bytes):
        raw = b""
    facts: RequestFacts | None = getattr(request, _MARK, None)
    if facts is None:
        body = None
        if raw and len(raw) <= _MAX_REQUEST_PARSE:
            try:
                parsed = json.loads(raw)
            except ValueError:
                return None  # not a JSON API call
            if isinstance(parsed, dict):
                body = parsed
        facts = shape.request(body, raw, path_model)
        if facts.body is not None:
            _replace_body(lib, request, facts.body)
            raw = facts.body
        try:
            setattr(request, _MARK, facts._replace(body=None))
        except Exception:
            logger.debug("meterline: cannot mark the request", exc_info=True)
    provider = meter.providers.resolve(url.host, url.port, shape.provider)
    consumer_id, feature = attribution.current()
    return Prepared(shape, facts, raw, provider, consumer_id, feature)


def admit(meter: Meter, lib: Library, request: Any, prepared: Prepared) -> Any:
    """Ask the budget guard; returns its admission (None: nothing reserved).

    Raises:
        BudgetExceeded, RateLimited: the call must not be sent (the only exceptions the
            instrumentation raises into the app).
    """
    guard = meter.guard
    if (
        guard is None
        or not prepared.consumer_id
        or guard.cached(prepared.consumer_id, prepared.feature)
    ):
        return None
    ask = guard.ask(prepared)
    return guard.admit(ask)


async def admit_async(meter: Meter, lib: Library, request: Any, prepared: Prepared) -> Any:
    """:func:`admit` for an async send (round trips off the event loop)."""
    guard = meter.guard
    if (
        guard is None
        or not prepared.consumer_id
        or guard.cached(prepared.consumer_id, prepared.feature)
    ):
        return None
    ask = guard.ask(prepared)
    return await guard.admit_async(ask)


def admitted(lib: Library, request: Any, prepared: Prepared, admission: Any) -> Prepared:
    """``prepared`` after the guard's rewrite, if any (the request's body replaced)."""
    if admission is None or admission.body is None:
        return prepared
    _replace_body(lib, request, admission.body)
    facts = prepared.facts._replace(model=admission.model, max_tokens=admission.max_tokens)
    return prepared._replace(facts=facts, raw=admission.body)


def open_call(meter: Meter, request: Any, prepared: Prepared, admission: Any = None) -> Call:
    """Start the span of a prepared LLM request about to be sent."""
    url = request.url
    host = url.host
    port = url.port
    shape, facts, raw = prepared.shape, prepared.facts, prepared.raw
    consumer_id, feature = prepared.consumer_id, prepared.feature
    operation = shape.operation
    model = facts.model
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": prepared.provider,
        "server.address": host,
        "server.port": port or (443 if url.scheme == "https" else 80),
        "meterline.request.stream": facts.stream,
    }
    if model:
        attrs["gen_ai.request.model"] = model
    if facts.max_tokens is not None:
        attrs["gen_ai.request.max_tokens"] = facts.max_tokens
    if consumer_id is not None:
        attrs["meterline.consumer.id"] = consumer_id
    if feature is not None:
        attrs["meterline.feature"] = feature
    ticket = None
    if admission is not None:
        if admission.reservation_id is not None:
            attrs[RESERVATION_ID] = admission.reservation_id
            ticket = Ticket(meter.guard, admission.reservation_id, model)
        if admission.degraded:
            attrs[DEGRADED] = True
    span = meter.tracer.start_span(
        f"{operation} {model}" if model else operation, kind=SpanKind.CLIENT, attributes=attrs
    )
    _mark_enclosing_span_superseded()
    return Call(shape, span, len(raw), facts.strip, ticket)


def start_call(meter: Meter, lib: Library, request: Any) -> Call | None:
    """A :class:`Call` (span started) when ``request`` is an LLM call, else None (no guard)."""
    prepared = prepare(meter, lib, request)
    return None if prepared is None else open_call(meter, request, prepared)


def release(meter: Meter, admission: Any) -> None:
    """Give back a reservation whose call will not be metered (our own failure)."""
    if admission is not None and admission.reservation_id is not None and meter.guard is not None:
        try:
            meter.guard.release(admission.reservation_id)
        except Exception:
            logger.debug("meterline: could not release a reservation", exc_info=True)


SUPERSEDED = "meterline.superseded"


def _mark_enclosing_span_superseded() -> None:
    """Keep the span around this call (an SDK's own GenAI span, an agent's) out of totals.

    Such spans report the same response again, or a whole-call failure after the SDK's
    retries, or a sum of their children; meterline's per-attempt span is the exact
    report, so the store skips spans marked ``meterline.superseded``.
    """
    enclosing = get_current_span()
    if enclosing.is_recording():
        enclosing.set_attribute(SUPERSEDED, True)


def _replace_body(lib: Library, request: Any, body: bytes) -> None:
    request.stream = lib.byte_stream(body)
    request._content = body
    request.headers["Content-Length"] = str(len(body))
    request.headers["Accept-Encoding"] = "identity"


def on_response(lib: Library, call: Call, response: Any, *, sync: bool) -> None:
    """Watch ``response``'s body, or finish now when it needs no watching."""
    headers = response.headers
    # A response built with its content (MockTransport, caches) is already read and decoded.
    content = getattr(response, "_content", None)
    preloaded = isinstance(content, bytes)
    watch = call.on_headers(
        response.status_code,
        headers.get("content-type", ""),
        "" if preloaded else headers.get("content-encoding", ""),
        lib.decoder,
    )
    if not watch:
        call.finish(complete=True)
        return
    if preloaded:
        out = call.feed(content)
        tail = call.end_of_body()
        if call.strip and (out is not content or tail):
            response._content = out + tail
        call.finish(complete=True)
        return
    wrapper = lib.sync_stream if sync else lib.async_stream
    response.stream = wrapper(response.stream, call)


def sync_send(meter_ref: Callable[[], Meter | None], lib: Library) -> Callable[..., Any]:
    """The wrapt wrapper for ``Client.send``."""

    def send(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        meter = meter_ref()
        prepared = None
        if meter is not None:
            try:
                request = args[0] if args else kwargs["request"]
                prepared = prepare(meter, lib, request)
            except Exception:
                logger.debug("meterline: could not start a call", exc_info=True)
        if prepared is None:
            return wrapped(*args, **kwargs)
        admission = None
        try:
            admission = admit(meter, lib, request, prepared)  # type: ignore[arg-type]
        except GUARD_REFUSALS:
            raise
        except Exception:
            logger.debug("meterline: the budget guard failed", exc_info=True)
        call = None
        try:
            prepared = admitted(lib, request, prepared, admission)
            call = open_call(meter, request, prepared, admission)  # type: ignore[arg-type]
        except Exception:
            logger.debug("meterline: could not start a call", exc_info=True)
            release(meter, admission)  # type: ignore[arg-type]
        if call is None:
            return wrapped(*args, **kwargs)
        stream = kwargs.pop("stream", False)
        try:
            response = wrapped(*args, stream=True, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        try:
            on_response(lib, call, response, sync=True)
        except Exception:
            logger.debug("meterline: could not watch the response", exc_info=True)
            call.finish(complete=False)
        if not stream:
            try:
                response.read()
            except BaseException:
                response.close()
                raise
        return response

    return send


def async_send(meter_ref: Callable[[], Meter | None], lib: Library) -> Callable[..., Any]:
    """The wrapt wrapper for ``AsyncClient.send``."""

    async def send(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        meter = meter_ref()
        prepared = None
        if meter is not None:
            try:
                request = args[0] if args else kwargs["request"]
                prepared = prepare(meter, lib, request)
            except Exception:
                logger.debug("meterline: could not start a call", exc_info=True)
        if prepared is None:
            return await wrapped(*args, **kwargs)
        admission = None
        try:
            admission = await admit_async(meter, lib, request, prepared)  # type: ignore[arg-type]
        except GUARD_REFUSALS:
            raise
        except Exception:
            logger.debug("meterline: the budget guard failed", exc_info=True)
        call = None
        try:
            prepared = admitted(lib, request, prepared, admission)
            call = open_call(meter, request, prepared, admission)  # type: ignore[arg-type]
        except Exception:
            logger.debug("meterline: could not start a call", exc_info=True)
            release(meter, admission)  # type: ignore[arg-type]
        if call is None:
            return await wrapped(*args, **kwargs)
        stream = kwargs.pop("stream", False)
        try:
            response = await wrapped(*args, stream=True, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        try:
            on_response(lib, call, response, sync=False)
        except Exception:
            logger.debug("meterline: could not watch the response", exc_info=True)
            call.finish(complete=False)
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    return send


def _sync_stream_class(base: type) -> type:
    class MeteredStream(base):  # type: ignore[misc, valid-type]
        """The response's raw byte stream, inspected on its way to the app."""

        def __init__(self, inner: Any, call: Call) -> None:
            self._inner = inner
            self._call = call

        def __iter__(self) -> Any:
            call = self._call
            try:
                for chunk in self._inner:
                    out = call.feed(chunk)
                    if out:
                        yield out
            except GeneratorExit:
                call.finish(complete=False)
                raise
            except BaseException as exc:
                call.fail(exc)
                raise
            tail = call.end_of_body()
            call.finish(complete=True)
            if tail:
                yield tail

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._call.finish(complete=False)

        def __del__(self) -> None:
            # An app that drops a response unread and unclosed still gets its span.
            call = getattr(self, "_call", None)
            if call is not None and not call.done:
                call.finish(complete=False)

    return MeteredStream


def _async_stream_class(base: type) -> type:
    class AsyncMeteredStream(base):  # type: ignore[misc, valid-type]
        """The response's raw async byte stream, inspected on its way to the app."""

        def __init__(self, inner: Any, call: Call) -> None:
            self._inner = inner
            self._call = call

        async def __aiter__(self) -> Any:
            call = self._call
            try:
                async for chunk in self._inner:
                    out = call.feed(chunk)
                    if out:
                        yield out
            except GeneratorExit:
                call.finish(complete=False)
                raise
            except BaseException as exc:
                call.fail(exc)
                raise
            tail = call.end_of_body()
            call.finish(complete=True)
            if tail:
                yield tail

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                self._call.finish(complete=False)

        def __del__(self) -> None:
            call = getattr(self, "_call", None)
            if call is not None and not call.done:
                call.finish(complete=False)

    return AsyncMeteredStream
