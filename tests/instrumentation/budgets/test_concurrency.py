"""The hard limit holds through the guard: 50 concurrent SDK calls from 50 threads, and
from 4 processes run under stock ``opentelemetry-instrument`` (zero code changes), against
one budget on a real aggregator. Each call is a slow stream (the simulator pauses between
events), so reserves happen while others are in flight; the limit holds exactly ten
worst cases and a half: exactly ten calls go, forty raise ``meterline.BudgetExceeded``,
and what they spent, once settled, is within the limit.
Without the guard (today's main before this work) all fifty go."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import openai
import pytest

import meterline
from meterline.instrumentation import consumer
from tests.aggregator._budgets import ADMIN

from ._calls import MESSAGES
from .conftest import Aggregator, instrument_guarded, settled

# Slow streams that use their whole output budget: a settled call frees only its input
# margin (~4 % of a worst case), so ten settles never make room for an eleventh call
# and the count is exact whatever the timing.
SLOW = {"x-simulator-chunk-delay-ms": "40", "x-simulator-output-tokens": "40"}
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")


def worst_case(sim, agg: Aggregator, who: str) -> Decimal:
    """One call's worst case, as the aggregator prices it (from a refusal)."""
    agg.budget(who + "-probe", limit="0.000001")
    with consumer(who + "-probe"), pytest.raises(meterline.BudgetExceeded) as info:
        stream_once(openai.OpenAI(base_url=sim.openai_base_url, api_key="sk"))
    return info.value.estimate


def stream_once(client: openai.OpenAI) -> int:
    chunks = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=40, stream=True, extra_headers=SLOW
    )
    return sum(1 for _ in chunks)


def check(agg: Aggregator, who: str, limit: Decimal, allowed: int, refused: int) -> None:
    assert (allowed, refused) == (10, 40)
    settled()
    state = agg.state(who)
    assert Decimal(state["reserved"]) == 0
    assert 0 < Decimal(state["spent"]) <= limit


@pytest.fixture
def guarded(monkeypatch, agg):
    """Fail closed with a long timeout: a slow answer under the burst must not let a
    call through unchecked (that would be fail-open, not the atomic bound)."""
    yield from instrument_guarded(
        monkeypatch, agg.url, METERLINE_BUDGETS_FAIL="closed", METERLINE_BUDGETS_TIMEOUT="60"
    )


def test_fifty_threads_never_overshoot(sim, agg, guarded, who):
    worst = worst_case(sim, agg, who)
    limit = worst * Decimal("10.5")
    agg.budget(who, limit=str(limit))
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk", max_retries=0)
        barrier.wait()
        try:
            with consumer(who):
                stream_once(client)
            outcome = "allowed"
        except meterline.BudgetExceeded as exc:
            outcome = "refused" if exc.policy == "block" else repr(exc)
        except Exception as exc:  # anything else fails the test
            outcome = repr(exc)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(outcomes) <= {"allowed", "refused"}, outcomes
    check(agg, who, limit, outcomes.count("allowed"), outcomes.count("refused"))


CHILD = r"""
import json, sys, threading, time
import openai, meterline
base, n, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out, lock = [], threading.Lock()
def one():
    client = openai.OpenAI(base_url=base, api_key="sk", max_retries=0)
    time.sleep(max(0.0, start - time.time()))
    try:
        chunks = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user",
            "content": "Say something about foxes and their dens."}], max_tokens=40,
            stream=True, extra_headers={"x-simulator-chunk-delay-ms": "40",
                                         "x-simulator-output-tokens": "40"})
        sum(1 for _ in chunks)
        r = "allowed"
    except meterline.BudgetExceeded as exc:
        r = "refused" if exc.policy == "block" else repr(exc)
    except Exception as exc:
        r = repr(exc)
    with lock:
        out.append(r)
threads = [threading.Thread(target=one) for _ in range(n)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(out))
"""


@pytest.mark.skipif(not INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
def test_four_processes_never_overshoot(sim, agg, guarded, who, tmp_path):
    worst = worst_case(sim, agg, who)
    limit = worst * Decimal("10.5")
    agg.budget(who, limit=str(limit))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METERLINE_"))}
    env.update(
        METERLINE_BUDGETS="enforce", METERLINE_API_URL=agg.url, METERLINE_API_KEY=ADMIN,
        METERLINE_CONSUMER_ID=who, METERLINE_BUDGETS_FAIL="closed",
        METERLINE_BUDGETS_TIMEOUT="60", METERLINE_SPOOL_DIR=str(tmp_path / "spool"),
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
    )  # fmt: skip
    start = time.time() + 6  # every process fires at the same wall-clock instant
    procs = [
        subprocess.Popen(
            [str(INSTRUMENT), sys.executable, "-c", CHILD, sim.openai_base_url, str(n), str(start)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for n in (13, 13, 12, 12)
    ]
    outcomes: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outcomes += json.loads(out.strip().splitlines()[-1])
    assert set(outcomes) <= {"allowed", "refused"}, outcomes
    check(agg, who, limit, outcomes.count("allowed"), outcomes.count("refused"))
