"""The overhead benchmark's own guards: it must refuse figures that would mean nothing.

The OpenLIT half needs its own environment (built by the benchmark from the package index,
~20 s), so CI runs only the project-environment half; the guards it shares are tested here.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "instrumentation_overhead.py"


def _load():
    spec = importlib.util.spec_from_file_location("instrumentation_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load()


def _config(*scopes: str):
    return bench._Config(lambda: None, lambda: None, scopes)


def test_check_refuses_a_configuration_that_instruments_no_call():
    produced = Counter({"openlit.instrumentation.openai": 5})
    with pytest.raises(SystemExit, match=r"openlit: 5 spans from openlit\* for 6 requests"):
        bench._check("openlit", _config("openlit"), produced, 6)


def test_check_refuses_spans_of_a_configuration_that_should_be_off():
    produced = Counter({"meterline.instrumentation": 6})
    with pytest.raises(SystemExit, match=r"bare: 6 spans from 'meterline.instrumentation'"):
        bench._check("bare", _config(), produced, 6)
    with pytest.raises(SystemExit, match="another configuration is on"):
        both = Counter({"openlit.instrumentation.openai": 6, **produced})
        bench._check("openlit", _config("openlit"), both, 6)


def test_check_accepts_one_span_per_request_from_each_expected_scope():
    produced = Counter(
        {"openlit.instrumentation.openai": 6, "opentelemetry.instrumentation.httpx": 6}
    )
    bench._check(
        "openlit+httpx", _config("openlit", "opentelemetry.instrumentation.httpx"), produced, 6
    )


def test_token_report_flags_every_meterline_count_that_differs_from_the_provider(capsys):
    right = {case: bench.truth(case) for case in ("call", "stream", "stream+usage")}
    assert bench._report_tokens({"meterline": right}) == []
    wrong = {**right, "stream": {**right["stream"], "cache_read": None, "output": 25}}
    guessed = {"call": right["call"], "stream": {"input": 8, "output": 25}, "stream+usage": None}
    failures = bench._report_tokens({"meterline": wrong, "openlit": guessed})
    assert failures == [
        "meterline recorded cache_read=None for 'stream', not 1024",
        "meterline recorded output=25 for 'stream', not 74",
    ]
    out = capsys.readouterr().out
    assert "25*" in out and "no usage span" in out  # the peer's misses are shown, not failed


def test_token_report_fails_when_meterline_records_no_usage():
    right = {case: bench.truth(case) for case in ("call", "stream")}
    assert bench._report_tokens({"meterline": {**right, "stream+usage": None}}) == [
        "meterline recorded no usage for 'stream+usage'"
    ]


@pytest.mark.e2e
def test_project_environment_half_runs_and_meters_exactly():
    """The whole project-environment run, tiny: real SDK, loopback provider, every guard."""
    args = ["--skip-openlit", "--rounds", "2", "--calls", "3", "--streams", "1"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "meterline added per call / plain httpx2 span added:" in out
    assert "meterline added per chunk / SDK own per chunk:" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["meterline"]]
    call, stream = ["1200", "1024", "300", "192"], ["1200", "1024", "74", "64"]
    assert [r[1:] for r in rows[-3:]] == [call, stream, stream]  # call, stream, stream+usage
