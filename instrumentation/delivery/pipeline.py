"""Tracer providers for usage: who exports meterline's spans, whatever the app samples.

* :func:`usage_tracer` — a tracer whose spans are always recorded and sampled (an
  ``ALWAYS_ON`` copy of the provider's tracer for meterline's scope): the app's sampler
  decides about the app's spans, never about usage.
* :func:`configure` — for ``instrument()`` and ``meterline instrument``: when the app has
  no SDK tracer provider, install one (resource from ``OTEL_*``, sampler from
  ``OTEL_TRACES_SAMPLER``) delivering through :class:`SpoolingSpanProcessor`.
* :func:`delivery_provider` — when no provider is given, usage goes through meterline's
  own exporter: the global provider if meterline configured it, else a dedicated
  (non-global) provider sharing the app's resource.

Either way meterline's delivery is a :class:`SpoolingSpanProcessor` (spans on disk within
as they end, delivered from there) and the stop signals flush it
(:mod:`.signals`). With an explicit ``tracer_provider``, usage goes through that
provider's pipeline instead, and its durability is the app's.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from meterline.instrumentation.delivery import signals
from meterline.instrumentation.delivery.processor import SpoolingSpanProcessor

logger = logging.getLogger(__name__)

_OWNED = "_meterline_delivery"
_dedicated: TracerProvider | None = None


def usage_tracer(provider: Any, scope: str, version: str) -> Any:
    """A tracer for meterline's spans that ignores the provider's sampler."""
    tracer = provider.get_tracer(scope, version)
    if isinstance(tracer, SdkTracer):
        tracer = copy.copy(tracer)
        tracer.sampler = ALWAYS_ON
    return tracer


def _add_delivery(provider: TracerProvider) -> None:
    processor = SpoolingSpanProcessor()
    provider.add_span_processor(processor)
    setattr(provider, _OWNED, True)
    signals.install(processor)


def configure() -> TracerProvider:
    """The global SDK provider; installs one exporting to meterline if the app has none."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create())
    _add_delivery(provider)
    trace.set_tracer_provider(provider)
    installed = trace.get_tracer_provider()
    return installed if isinstance(installed, TracerProvider) else provider


def delivery_provider() -> TracerProvider:
    """The provider whose pipeline delivers usage to meterline (see the module doc)."""
    global _dedicated
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider) and getattr(current, _OWNED, False):
        return current
    if _dedicated is None:
        resource = current.resource if isinstance(current, TracerProvider) else Resource.create()
        _dedicated = TracerProvider(resource=resource, sampler=ALWAYS_ON)
        _add_delivery(_dedicated)
    return _dedicated
