"""Billing-grade delivery of usage spans: sampling bypass, retry, on-disk spool.

* :mod:`.exporter` — :class:`MeterlineSpanExporter` (OTLP/HTTP, retry, spool);
* :mod:`.spool` — the bounded on-disk queue and its exactly-once flush;
* :mod:`.pipeline` — the tracer provider and the always-sampled usage tracer.
"""

from __future__ import annotations

from meterline.instrumentation.delivery.exporter import MeterlineSpanExporter, resolve_endpoint
from meterline.instrumentation.delivery.spool import Spool

__all__ = ["MeterlineSpanExporter", "Spool", "resolve_endpoint"]
