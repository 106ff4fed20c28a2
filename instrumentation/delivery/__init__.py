"""Billing-grade delivery of usage spans: sampling bypass, write-ahead spool, retry.

* :mod:`.processor` — :class:`SpoolingSpanProcessor`: each span on disk as it ends,
  delivered from there, deleted only once acknowledged;
* :mod:`.records` — the span record the spool keeps, and its OTLP encoding;
* :mod:`.spool` — the on-disk queue, shared safely by threads and processes;
* :mod:`.flush` — delivering the spool (several files per POST, answers settled per file);
* :mod:`.sender` — one OTLP/HTTP POST and what its answer means;
* :mod:`.signals` — SIGTERM/SIGHUP (and a default SIGINT) flush, then stop the app as before;
* :mod:`.exporter` — :class:`MeterlineSpanExporter` for apps with their own batch processor;
* :mod:`.pipeline` — the tracer provider and the always-sampled usage tracer.
"""

from __future__ import annotations

from meterline.instrumentation.delivery.exporter import MeterlineSpanExporter
from meterline.instrumentation.delivery.processor import SpoolingSpanProcessor
from meterline.instrumentation.delivery.sender import resolve_endpoint
from meterline.instrumentation.delivery.spool import Spool

__all__ = ["MeterlineSpanExporter", "Spool", "SpoolingSpanProcessor", "resolve_endpoint"]
