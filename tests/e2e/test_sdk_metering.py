"""The real ``openai`` and ``anthropic`` SDKs, metered with zero code, counted exactly.

A subprocess runs ``tests/e2e/app_sdk.py`` under stock ``opentelemetry-instrument`` (the
``meterline`` entry point is picked up with the package merely installed) against the
provider simulator; usage is exported to a real ``meterline serve``. Each scenario runs
under its own consumer, and ``GET /v1/usage?consumer=…`` must equal — count for count —
the simulator's ledger of what it returned for that scenario's requests: sync, async,
streamed with and without ``include_usage``, Responses, embeddings, legacy completions,
Anthropic cache writes (5-minute and 1-hour) and reads, reasoning and thinking, 429/500/529
with the SDKs' retries. Also: the app sees exactly what it sees without instrumentation;
streams cut short are still recorded; a 1 % trace sampler loses no usage. (``meterline
demo`` is tested in ``tests/demo/``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meterline.simulator import SimulatorConfig, SimulatorServer, start
from meterline.simulator.ledger import TOTAL_KEYS

pytestmark = pytest.mark.e2e

APP = Path(__file__).with_name("app_sdk.py")
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")
EXACT = [
    "openai_sync", "openai_stream", "openai_async", "anthropic_sync", "anthropic_stream",
    "anthropic_async", "retries", "baggage_only",
]  # fmt: skip


class Stack:
    def __init__(self, server: Any, sim: SimulatorServer, tmp: Path) -> None:
        self.server = server
        self.sim = sim
        self.tmp = tmp

    def env(self, sim: SimulatorServer | None = None, **extra: str) -> dict[str, str]:
        sim = sim or self.sim
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METERLINE_"))}
        env.update(
            OPENAI_BASE_URL=sim.openai_base_url,
            OPENAI_API_KEY="sk-e2e",
            ANTHROPIC_BASE_URL=sim.url,
            ANTHROPIC_API_KEY="sk-ant-e2e",
            OTEL_EXPORTER_OTLP_ENDPOINT=self.server.otlp_http_base,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_SERVICE_NAME="sdk-e2e",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            METERLINE_SPOOL_DIR=str(self.tmp / "spool"),
            **extra,
        )
        return env

    def run_app(
        self, out: str, *scenarios: str, instrumented: bool = True, **env: Any
    ) -> dict[str, Any]:
        sim = env.pop("sim", None)
        path = self.tmp / out
        command = [sys.executable, str(APP), str(path), *scenarios]
        if instrumented:
            command = [str(INSTRUMENT), *command]
        proc = subprocess.run(
            command, env=self.env(sim, **env), capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(path.read_text())

    def usage(self, **params: str) -> list[dict[str, Any]]:
        r = httpx.get(self.server.api_url + "/v1/usage", params=params, timeout=10)
        assert r.status_code == 200, r.text
        return list(r.json()["rows"])

    def wait_usage(self, consumer: str, expected: dict[str, int]) -> dict[str, Any]:
        """The consumer's totals once its requests and tokens arrived (then settled)."""
        deadline = time.monotonic() + 20
        while True:
            rows = self.usage(consumer=consumer)
            row = rows[0] if rows else {}
            arrived = row and all(
                int(row.get(k, 0)) >= expected[k]
                for k in ("requests", "input_tokens", "output_tokens")
            )
            if arrived or time.monotonic() > deadline:
                time.sleep(0.3)
                rows = self.usage(consumer=consumer)
                return {k: int(rows[0][k]) if rows else 0 for k in TOTAL_KEYS}
            time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    pytest.importorskip("chdb")
    from meterline.launcher import start_server

    tmp = tmp_path_factory.mktemp("sdk-e2e")
    with start_server(tmp / "data") as server, start(SimulatorConfig(retry_after_ms=20)) as sim:
        yield Stack(server, sim, tmp)


@pytest.fixture(scope="module")
def instrumented(stack: Stack) -> dict[str, Any]:
    return stack.run_app("instrumented.json")


@pytest.fixture(scope="module")
def plain(stack: Stack) -> dict[str, Any]:
    with start(SimulatorConfig(retry_after_ms=20)) as fresh:  # same cache history
        return stack.run_app("plain.json", instrumented=False, sim=fresh)


def test_app_sees_exactly_what_it_sees_without_meterline(
    instrumented: dict[str, Any], plain: dict[str, Any]
) -> None:
    errors = {k: v for k, v in instrumented.items() if "unexpected_error" in v}
    assert not errors
    assert instrumented == plain
    bare = instrumented["openai_stream"]["bare"]
    assert all(chunk["choices"] for chunk in bare)  # no injected usage chunk leaks
    assert all(chunk["usage"] is None for chunk in bare)
    asked = instrumented["openai_stream"]["asked"]
    assert asked[-1]["choices"] == [] and asked[-1]["usage"]  # an app that asked keeps it


@pytest.mark.parametrize("scenario", EXACT)
def test_exact_usage_per_scenario(
    stack: Stack, instrumented: dict[str, Any], scenario: str
) -> None:
    assert "unexpected_error" not in instrumented[scenario], instrumented[scenario]
    expected = stack.sim.ledger.totals(tag=scenario)
    assert expected["requests"] > 0
    assert stack.wait_usage(scenario, expected) == expected


def test_scenarios_exercise_what_they_claim(stack: Stack, instrumented: dict[str, Any]) -> None:
    ledger = stack.sim.ledger
    sync = ledger.totals(tag="openai_sync")
    assert sync["cache_read_input_tokens"] >= 1024 and sync["reasoning_output_tokens"] > 0
    anth = ledger.entries(tag="anthropic_sync")
    assert anth[0].cache_creation_1h_input_tokens > 0
    assert anth[0].cache_creation_input_tokens > anth[0].cache_creation_1h_input_tokens
    assert anth[1].cache_read_input_tokens == anth[0].cache_creation_input_tokens
    assert anth[2].reasoning_output_tokens > 0
    streamed = ledger.entries(tag="openai_stream")
    assert all(e.stream and e.completed for e in streamed)
    assert all(e.usage_sent for e in streamed)  # meterline asked for usage on every stream
    retries = ledger.totals(tag="retries")
    assert (retries["requests"], retries["failed_requests"]) == (11, 8)


def test_streams_cut_short_are_recorded(stack: Stack, instrumented: dict[str, Any]) -> None:
    seen = instrumented["cut_short"]
    assert "unexpected_error" not in seen, seen
    assert len(seen["openai_abandoned"]) == 3 and seen["anthropic_abandoned"][0] == "message_start"
    assert "openai_dropped" in seen and "anthropic_dropped" in seen
    entries = stack.sim.ledger.entries(tag="cut_short")
    assert len(entries) == 4 and not any(e.usage_sent for e in entries)
    expected = stack.sim.ledger.totals(tag="cut_short")
    stack.wait_usage("cut_short", {**expected, "input_tokens": 1, "output_tokens": 1})
    rows = {r["provider"]: r for r in stack.usage(consumer="cut_short", group_by="provider")}
    assert {p: int(r["requests"]) for p, r in rows.items()} == {"openai": 2, "anthropic": 2}
    anthropic_in = sum(e.input_tokens for e in entries if e.provider == "anthropic")
    assert int(rows["anthropic"]["input_tokens"]) == anthropic_in  # from message_start
    assert all(int(r["output_tokens"]) > 0 for r in rows.values()), json.dumps(rows)  # estimated


def test_one_percent_sampler_keeps_all_usage(stack: Stack) -> None:
    stack.run_app(
        "sampled.json",
        "many_calls",
        OTEL_TRACES_SAMPLER="traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.01",
        E2E_CONSUMER_SUFFIX="-sampled",
        E2E_CALLS="20",
    )
    expected = stack.sim.ledger.totals(tag="many_calls-sampled")
    assert expected["requests"] == 20
    assert stack.wait_usage("many_calls-sampled", expected) == expected
