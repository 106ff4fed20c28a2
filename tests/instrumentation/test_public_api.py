"""The public surface, pinned; imports stay light."""

from __future__ import annotations

import subprocess
import sys

import meterline.instrumentation


def test_all_is_pinned() -> None:
    assert meterline.instrumentation.__all__ == [
        "MeterlineInstrumentor",
        "MeterlineSpanExporter",
        "Spool",
        "SpoolingSpanProcessor",
        "consumer",
        "instrument",
        "on_budget",
        "uninstrument",
    ]
    for name in meterline.instrumentation.__all__:
        assert getattr(meterline.instrumentation, name)


def test_imports_nothing_of_the_server() -> None:
    code = (
        "import sys, meterline.instrumentation as m, meterline.instrumentation.cli\n"
        "m.MeterlineInstrumentor().instrument(tracer_provider=__import__("
        "'opentelemetry.sdk.trace', fromlist=['x']).TracerProvider())\n"
        "bad = [n for n in ('chdb', 'fastapi', 'clickhouse_connect', 'grpc', 'yaml',"
        " 'pydantic', 'meterline.collector', 'meterline.aggregator') if n in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
