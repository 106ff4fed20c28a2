"""Zero code, in subprocesses: ``opentelemetry-instrument`` and ``meterline instrument``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .fakes import OTLPReceiver, free_port

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
N = 4

APP = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import httpx2, openai
from fakes import FakeLLM

client = openai.OpenAI(
    api_key="k",
    base_url="https://api.openai.com/v1",
    http_client=httpx2.Client(transport=httpx2.MockTransport(FakeLLM().handler(httpx2))),
)
for _ in range({N}):
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{{"role": "user", "content": "hi"}}], stream=True
    )
    assert all(chunk.choices for chunk in stream)
print("app done")
"""


def run(cmd: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "METERLINE_")) and k != "PYTHONPATH"
    }
    full.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        METERLINE_SPOOL_DIR=str(tmp_path / "spool"),
        METERLINE_EXPORT_RETRY_SECONDS="0",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_RESOURCE_ATTRIBUTES="meterline.consumer.id=tenant-from-resource",
        **env,
    )
    out = subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out


def usage(receiver: OTLPReceiver) -> list[dict[str, object]]:
    return [attrs for scope, _, attrs in receiver.spans() if scope == "meterline.instrumentation"]


def test_opentelemetry_instrument_picks_up_the_entry_point(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    with OTLPReceiver() as receiver:
        out = run(
            [str(BIN / "opentelemetry-instrument"), sys.executable, "app.py"],
            tmp_path,
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base,
            OTEL_TRACES_SAMPLER="traceidratio",
            OTEL_TRACES_SAMPLER_ARG="0.01",
        )
        assert "app done" in out.stdout
    spans = usage(receiver)
    assert len(spans) == N
    for attrs in spans:
        assert attrs["gen_ai.usage.input_tokens"].int_value == 1200
        assert attrs["gen_ai.usage.output_tokens"].int_value == 10
        assert attrs["meterline.request.stream"].bool_value is True


def test_meterline_instrument_spools_then_flush_delivers_once(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    meterline = str(BIN / "meterline")
    out = run(
        [meterline, "instrument", "--", sys.executable, "app.py"],
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
    )
    assert "app done" in out.stdout
    assert list((tmp_path / "spool").glob("*.batch")), "collector down: usage must be spooled"
    with OTLPReceiver(port) as receiver:
        run([meterline, "spool", "flush"], tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base)
        run([meterline, "spool", "flush"], tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base)
    spans = usage(receiver)
    assert len(spans) == N
    assert len({s.span_id for scope, s, _ in receiver.spans() if scope.startswith("meter")}) == N
    assert all(a["gen_ai.usage.input_tokens"].int_value == 1200 for a in spans)
    assert not list((tmp_path / "spool").glob("*"))
