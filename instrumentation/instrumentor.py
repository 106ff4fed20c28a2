"""``MeterlineInstrumentor``: the ``opentelemetry_instrumentor`` entry point ``meterline``.

``_instrument`` wraps ``Client.send`` / ``AsyncClient.send`` of httpx and httpx2 (each if
importable) and ``_uninstrument`` unwraps exactly those. Keyword arguments:

* ``tracer_provider`` — export usage through this provider's pipeline (its sampler is
  bypassed for usage). Without it, usage goes through meterline's own delivery
  (:mod:`.delivery.pipeline`): retry, spool, always sampled.
* ``provider_hosts`` — ``{"host[:port]": "provider"}``, overriding
  ``METERLINE_PROVIDER_HOSTS`` and the well-known hosts.

``METERLINE_BUDGETS=enforce`` (read when instrumenting) adds the budget guard
(:mod:`.budgets`): calls reserve their worst case on the aggregator before they are sent.

Calls still in flight at interpreter exit, or when a stop signal is about to kill the
process, are ended first (``_call.interrupt_in_flight``), so their usage is delivered too.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.sdk.trace import TracerProvider
from wrapt import wrap_function_wrapper

from meterline import __version__
from meterline.instrumentation import attribution
from meterline.instrumentation._call import interrupt_in_flight
from meterline.instrumentation._transport import Library, Meter, async_send, sync_send
from meterline.instrumentation.delivery import signals
from meterline.instrumentation.delivery.pipeline import delivery_provider, usage_tracer
from meterline.instrumentation.package import _instruments
from meterline.instrumentation.providers import ProviderResolver

logger = logging.getLogger(__name__)

SCOPE = "meterline.instrumentation"
_LIBRARIES = ("httpx", "httpx2")
_PROCESSOR_ATTR = "_meterline_attribution"
_exit_hook: list[bool] = []


def _budget_guard() -> Any:
    """The budget guard when ``METERLINE_BUDGETS=enforce`` (imported only then)."""
    if not os.environ.get("METERLINE_BUDGETS"):
        return None
    try:
        from meterline.instrumentation.budgets._guard import Guard, GuardConfig

        config = GuardConfig.from_env()
        return None if config is None else Guard(config)
    except Exception:
        logger.warning(
            "meterline: the budget guard could not start; budgets are off", exc_info=True
        )
        return None


def _flush_settles() -> None:
    leases = sys.modules.get("meterline.instrumentation.budgets._lease")
    if leases is not None:  # held leases are returned in the same bounded flush
        leases.retire_all()
    module = sys.modules.get("meterline.instrumentation.budgets._outbox")
    if module is not None:
        module.flush_at_exit()


class MeterlineInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Meters every LLM call made through httpx or httpx2 (see the module docstring)."""

    _meter: Meter | None = None
    _patched: list[Any]
    _processors: list[attribution.AttributionSpanProcessor]

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider = kwargs.get("tracer_provider")
        provider_hosts: Mapping[str, str] | None = kwargs.get("provider_hosts")
        attribution.load_defaults()
        usage_provider = tracer_provider if tracer_provider is not None else delivery_provider()
        tracer = usage_tracer(usage_provider, SCOPE, __version__)
        self._meter = Meter(tracer, ProviderResolver(provider_hosts), _budget_guard())
        self._processors = []
        for provider in {id(p): p for p in (tracer_provider, trace.get_tracer_provider())}.values():
            self._attach_attribution(provider)
        if not _exit_hook:  # after the providers' own exit hooks, so it runs before them
            _exit_hook.append(True)
            atexit.register(_flush_settles)  # runs after in-flight calls ended (LIFO)
            atexit.register(interrupt_in_flight)
            signals.before_death(interrupt_in_flight)
        self._patched = []
        for name in _LIBRARIES:
            try:
                module = importlib.import_module(name)
                lib = Library(module)
            except Exception:
                continue
            wrap_function_wrapper(module, "Client.send", sync_send(self._current_meter, lib))
            wrap_function_wrapper(module, "AsyncClient.send", async_send(self._current_meter, lib))
            self._patched.append(module)

    def _uninstrument(self, **kwargs: Any) -> None:
        self._meter = None
        for module in self._patched:
            unwrap(module.Client, "send")
            unwrap(module.AsyncClient, "send")
        self._patched = []
        for processor in self._processors:
            processor.enabled = False
        self._processors = []

    def _current_meter(self) -> Meter | None:
        return self._meter

    def _attach_attribution(self, provider: Any) -> None:
        if not isinstance(provider, TracerProvider):
            return
        processor = getattr(provider, _PROCESSOR_ATTR, None)
        if processor is None:
            processor = attribution.AttributionSpanProcessor(SCOPE)
            provider.add_span_processor(processor)
            setattr(provider, _PROCESSOR_ATTR, processor)
        processor.enabled = True
        self._processors.append(processor)
