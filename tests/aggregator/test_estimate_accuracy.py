"""Estimate versus actual, end to end: the real openai SDK against the provider simulator.

The consumer's history is 20 calls the simulator answered (stored as the meter stores
them); then each of 10 new requests is estimated (``POST /v1/estimate``) before it is sent,
sent, and its actual cost — the simulator's usage at the same prices — compared with the
estimate's p50, p95 and worst case. The figures are printed (``-s``) and bounded here;
the simulator's output lengths are synthetic (8-48 words, meterline/simulator), so the
p50 error says how the history method behaves on a stable distribution, not on a model.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from decimal import Decimal

import httpx2
import openai
import pytest

from meterline.simulator import SimulatorConfig, SimulatorServer, start
from tests.aggregator._budgets import Clock, admin, budget_app
from tests.aggregator._calls import Call, insert_calls, utc

pytest.importorskip("bpe_openai")

NOW = utc(2026, 3, 20, 12)
TOPICS = ["invoices", "refunds", "the API", "rate limits", "streaming", "caching", "budgets",
          "tokens", "webhooks", "dashboards", "exports", "keys", "plans", "tiers", "alerts"]  # fmt: skip


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    server = start(SimulatorConfig(seed=3))
    try:
        yield server
    finally:
        server.stop()


def _messages(i: int) -> list[dict[str, str]]:
    topic = TOPICS[i % len(TOPICS)]
    return [
        {"role": "system", "content": "You answer support questions about a metering product."},
        {"role": "user", "content": f"Question {i}: how do {topic} work? " * (1 + i % 4)},
    ]


def _cost(inp: int, out: int) -> Decimal:
    return (Decimal(inp) * 2 + Decimal(out) * 8) / 1_000_000 * Decimal("1.2")  # acme +20 %


def test_estimate_versus_actual(sim, store, tmp_path):
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test",
                           http_client=httpx2.Client())  # fmt: skip
    ids = []
    for i in range(20):
        r = client.chat.completions.create(model="gpt-4o", messages=_messages(i), max_tokens=100)
        ids.append(r.id)
    entries = {e.id: e for e in sim.ledger.entries()}
    history = [entries[i] for i in ids]
    insert_calls(store, [Call(utc(2026, 3, 19, 9), feature="support", input=e.input_tokens,
                              output=e.output_tokens) for e in history])  # fmt: skip
    a = admin(budget_app(store, tmp_path, Clock(NOW)))
    rows = []
    for i in range(20, 30):
        est = a.post("/v1/estimate", json={
            "consumer": "acme", "feature": "support", "provider": "openai", "model": "gpt-4o",
            "messages": _messages(i), "max_tokens": 100}).json()  # fmt: skip
        assert est["output_tokens"]["source"] == "feature"
        assert est["output_tokens"]["history_calls"] == 20
        r = client.chat.completions.create(model="gpt-4o", messages=_messages(i), max_tokens=100)
        actual = _cost(r.usage.prompt_tokens, r.usage.completion_tokens)
        rows.append((est, r.usage.prompt_tokens, r.usage.completion_tokens, actual))
    print("\nestimate vs actual (gpt-4o, simulator)")
    errors = []
    for est, inp, out, actual in rows:
        p50, p95, worst = (Decimal(est["cost"][k]) for k in ("p50", "p95", "worst_case"))
        errors.append(float((p50 - actual) / actual))
        print(f"  input {est['input_tokens']:4} (actual {inp:4})  output p50 "
              f"{est['output_tokens']['p50']:3} p95 {est['output_tokens']['p95']:3} (actual "
              f"{out:3})  cost p50 {p50:.7f} p95 {p95:.7f} worst {worst:.7f} actual "
              f"{actual:.7f}  p50 error {errors[-1]:+.0%}")  # fmt: skip
        assert worst >= actual  # the worst case is never below what the call cost
    mean_abs = statistics.mean(abs(e) for e in errors)
    covered = sum(1 for est, *_, actual in rows if Decimal(est["cost"]["p95"]) >= actual)
    print(f"  mean |p50 error| {mean_abs:.0%}; p95 covers {covered} of {len(rows)} calls")
    assert mean_abs <= 0.35
    assert covered >= 8
