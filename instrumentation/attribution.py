"""Who a call is for: ``meterline.consumer.id`` and ``meterline.feature``.

Resolution, per key, first found wins:

1. :func:`consumer` — a context manager and decorator (sync and async functions);
2. OTel baggage ``meterline.consumer.id`` / ``meterline.feature`` (propagated from an
   upstream service or gateway by standard OTel propagation);
3. ``METERLINE_CONSUMER_ID`` / ``METERLINE_FEATURE`` (read when instrumenting); the store
   finally falls back to resource attributes (``OTEL_RESOURCE_ATTRIBUTES``).

:class:`AttributionSpanProcessor` stamps the same values on any other GenAI span started in
that context (another instrumentation's, or the SDK's own), so two reports of one response
dedupe under the same consumer.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

logger = logging.getLogger(__name__)

CONSUMER_KEY = "meterline.consumer.id"
FEATURE_KEY = "meterline.feature"
ENV_CONSUMER = "METERLINE_CONSUMER_ID"
ENV_FEATURE = "METERLINE_FEATURE"

_F = TypeVar("_F", bound=Callable[..., Any])

_current: contextvars.ContextVar[tuple[str | None, str | None] | None] = contextvars.ContextVar(
    "meterline_consumer", default=None
)


class _Defaults:
    consumer: str | None = None
    feature: str | None = None


_defaults = _Defaults()


def load_defaults() -> None:
    """Read the static defaults from the environment (called when instrumenting)."""
    _defaults.consumer = os.environ.get(ENV_CONSUMER) or None
    _defaults.feature = os.environ.get(ENV_FEATURE) or None


class consumer:
    """Attribute the LLM calls made inside to ``consumer_id`` (and ``feature``).

    Use as ``with consumer("acme", feature="summarize"):`` or as a decorator on a sync or
    async function. Nested blocks for the same consumer keep the outer feature unless they
    name one.
    """

    def __init__(self, consumer_id: str, *, feature: str | None = None) -> None:
        if not isinstance(consumer_id, str):
            raise TypeError(f"consumer_id must be a str, not {type(consumer_id).__name__!r}")
        self.consumer_id = consumer_id
        self.feature = feature
        self._tokens: list[contextvars.Token[Any]] = []

    def _value(self) -> tuple[str | None, str | None]:
        feature = self.feature
        if feature is None:
            outer = _current.get()
            if outer is not None and outer[0] == self.consumer_id:
                feature = outer[1]
        return self.consumer_id, feature

    def __enter__(self) -> consumer:
        self._tokens.append(_current.set(self._value()))
        return self

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._tokens.pop())

    async def __aenter__(self) -> consumer:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()

    def __call__(self, func: _F) -> _F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = _current.set(self._value())
                try:
                    return await func(*args, **kwargs)
                finally:
                    _current.reset(token)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = _current.set(self._value())
            try:
                return func(*args, **kwargs)
            finally:
                _current.reset(token)

        return wrapper  # type: ignore[return-value]


def current(context: Context | None = None) -> tuple[str | None, str | None]:
    """The consumer and feature in force in ``context`` (default: the current one)."""
    explicit = _current.get()
    consumer_id, feature = explicit if explicit is not None else (None, None)
    if consumer_id is None or feature is None:
        bag = baggage.get_all(context)
        if bag:
            if consumer_id is None:
                value = bag.get(CONSUMER_KEY)
                consumer_id = value if isinstance(value, str) and value else None
            if feature is None:
                value = bag.get(FEATURE_KEY)
                feature = value if isinstance(value, str) and value else None
    return consumer_id or _defaults.consumer, feature or _defaults.feature


class AttributionSpanProcessor(SpanProcessor):
    """Stamps consumer and feature on other GenAI spans started in the same context.

    Added once per tracer provider; ``enabled`` is cleared on uninstrument (an SDK
    provider cannot drop a processor).
    """

    def __init__(self, own_scope: str) -> None:
        self.enabled = True
        self._own_scope = own_scope

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if not self.enabled:
            return
        try:
            scope = span.instrumentation_scope
            if scope is not None and scope.name == self._own_scope:
                return
            attributes = span.attributes or {}
            if "gen_ai.operation.name" not in attributes and (
                "gen_ai.provider.name" not in attributes and "gen_ai.system" not in attributes
            ):
                return
            consumer_id, feature = current(parent_context)
            if consumer_id is not None and CONSUMER_KEY not in attributes:
                span.set_attribute(CONSUMER_KEY, consumer_id)
            if feature is not None and FEATURE_KEY not in attributes:
                span.set_attribute(FEATURE_KEY, feature)
        except Exception:
            logger.debug("meterline: could not attribute a span", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        return None
