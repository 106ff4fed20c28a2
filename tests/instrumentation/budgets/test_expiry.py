"""A crashed app's reservation holds its worst case until ``METERLINE_BUDGETS_TTL``, then
expires on the aggregator: an app killed (SIGKILL) mid-stream never settles, and the
budget's ``reserved`` returns to 0 after the TTL (not before)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

from tests.aggregator._budgets import ADMIN

CHILD = r"""
import sys
from opentelemetry.sdk.trace import TracerProvider
from meterline.instrumentation import consumer, instrument
import openai
instrument(tracer_provider=TracerProvider())
client = openai.OpenAI(base_url=sys.argv[1], api_key="sk", max_retries=0)
with consumer(sys.argv[2]):
    chunks = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Tell a long story."}],
        max_tokens=400, stream=True,
        extra_headers={"x-simulator-chunk-delay-ms": "500", "x-simulator-output-tokens": "400"})
    for chunk in chunks:
        print("chunk", flush=True)
"""
TTL = 6


def test_a_killed_app_s_reservation_expires_after_the_ttl(sim, agg, who, tmp_path):
    agg.budget(who, limit="5.00")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METERLINE_"))}
    env.update(METERLINE_BUDGETS="enforce", METERLINE_API_URL=agg.url, METERLINE_API_KEY=ADMIN,
               METERLINE_BUDGETS_TTL=str(TTL), METERLINE_SPOOL_DIR=str(tmp_path / "spool"),
               OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", CHILD, sim.openai_base_url, who], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the first chunk: reserved, sent, streaming
        assert line.strip() == "chunk", child.stderr.read() if child.stderr else ""
        reserved = Decimal(agg.state(who)["reserved"])
        assert reserved > 0
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert Decimal(agg.state(who)["reserved"]) == reserved  # no settle came, not expired yet
    deadline = time.monotonic() + TTL + 30
    while Decimal(agg.state(who)["reserved"]) != 0:
        assert time.monotonic() < deadline, "the reservation never expired"
        time.sleep(0.2)
    assert Decimal(agg.state(who)["spent"]) == 0
