"""meterline's zero-code instrumentation: exact token usage for every LLM call an app makes.

Three ways in:

* ``opentelemetry-instrument python app.py`` — the ``meterline`` entry point
  (:class:`MeterlineInstrumentor`) is picked up with the package merely installed;
* ``meterline instrument -- python app.py`` — the same, exporting to a local meterline
  unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` says otherwise;
* :func:`instrument` in code.

Attribute calls with :func:`consumer` (context manager or decorator), OTel baggage
``meterline.consumer.id`` / ``meterline.feature``, or ``METERLINE_CONSUMER_ID``.

Budgets are enforced before calls with ``METERLINE_BUDGETS=enforce`` (docs/budgets.md);
:func:`on_budget` registers the callback of ``checkpoint`` budgets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meterline.instrumentation.attribution import consumer
from meterline.instrumentation.budgets import on_budget
from meterline.instrumentation.delivery import MeterlineSpanExporter, Spool, SpoolingSpanProcessor
from meterline.instrumentation.instrumentor import MeterlineInstrumentor

__all__ = [
    "MeterlineInstrumentor",
    "MeterlineSpanExporter",
    "Spool",
    "SpoolingSpanProcessor",
    "consumer",
    "instrument",
    "on_budget",
    "uninstrument",
]


def instrument(
    *, tracer_provider: Any = None, provider_hosts: Mapping[str, str] | None = None
) -> MeterlineInstrumentor:
    """Meter this process's LLM calls (idempotent).

    When the app has no SDK tracer provider, one is installed that exports over OTLP/HTTP
    to ``OTEL_EXPORTER_OTLP_ENDPOINT`` or a local meterline (``http://127.0.0.1:4318``)
    through an on-disk spool (each span on disk as it ends), and SIGTERM /
    SIGHUP flush it before the app stops as it would have.

    Args:
        tracer_provider: export usage through this provider instead (its sampler is
            bypassed for usage spans).
        provider_hosts: ``{"host[:port]": "provider"}`` overrides.

    Returns:
        The (singleton) instrumentor.
    """
    from meterline.instrumentation.delivery.pipeline import configure

    if tracer_provider is None:
        configure()
    instrumentor = MeterlineInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=tracer_provider, provider_hosts=provider_hosts)
    return instrumentor


def uninstrument() -> None:
    """Undo :func:`instrument`."""
    instrumentor = MeterlineInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
