"""Estimate versus actual: the input-token count of the body each real SDK sends, against
the usage the provider simulator answered for it.

The simulator counts ``ceil(len(canonical prompt) / 4)`` (a heuristic, not a real
tokenizer: meterline/simulator), so this measures how the guard's reservation compares
with a provider's count on the same wire bodies — the calibrated estimate must err high,
never low, and by a bounded amount; the exact OpenAI count (a real BPE encoding) is
reported against it too, and differs from the simulator's heuristic by design.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from meterline.instrumentation import tokens
from meterline.instrumentation.tokens import count_input_tokens
from meterline.simulator import SimulatorConfig, SimulatorServer, start

ROOT = Path(__file__).resolve().parents[2]

PROMPTS: dict[str, str] = {
    "greeting": "Hello there, how are you today?",
    "question": "Summarise the meter in one line, and say what a reservation is for.",
    "docs": (ROOT / "docs" / "budgets.md").read_text()[:6000],
    "code": (ROOT / "aggregator" / "budgets" / "_cost.py").read_text()[:5000],
    "json": json.dumps([{"sku": f"A-{i}", "qty": i, "price": f"{i * 1.5:.2f}"} for i in range(80)]),
    "japanese": "今日はとても良い天気ですね。東京は人口が多い都市です。" * 10,
}
SYSTEM = "You are a careful assistant who answers in plain words."


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    server = start(SimulatorConfig(seed=11))
    try:
        yield server
    finally:
        server.stop()


class Bodies:
    """The JSON bodies the SDK put on the wire (an httpx2 request hook)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def hook(self, request: httpx2.Request) -> None:
        self.sent.append(json.loads(request.read()))


def _ratio_rows(sim: SimulatorServer, calls: list[tuple[str, str, str, dict[str, Any], str]]):
    rows = []
    entries = {e.id: e for e in sim.ledger.entries()}
    for label, provider, model, body, response_id in calls:
        n, exact = count_input_tokens(provider, model, body)
        actual = entries[response_id].input_tokens
        rows.append((label, provider, model, n, exact, actual, n / actual))
    return rows


TEXT = ("greeting", "question", "docs", "code")
"""Prompts where the simulator's chars/4 is close to a real encoding (see the exact rows);
on JSON and CJK it counts far fewer tokens than ``o200k_base`` does."""


def _check_estimate(label: str, ratio: float) -> None:
    assert ratio >= 1.0, (label, ratio)  # never below what the provider counted
    if label.split("/")[0] in TEXT:
        assert ratio <= 1.8, (label, ratio)  # short prompts: framing dominates
    else:
        assert ratio <= 5.0, (label, ratio)


def _print(rows: list[Any]) -> None:
    print("\nestimate vs the simulator's input tokens")
    for label, provider, model, n, exact, actual, ratio in rows:
        kind = "exact" if exact else "estimate"
        print(f"  {provider:9} {model:18} {label:9} {kind:8} {n:6} actual {actual:6} "
              f"error {ratio - 1:+.1%}")  # fmt: skip


def test_anthropic_estimate_errs_high_against_the_simulator(sim: SimulatorServer) -> None:
    bodies = Bodies()
    client = anthropic.Anthropic(
        base_url=sim.url, api_key="sk-ant-test",
        http_client=httpx2.Client(event_hooks={"request": [bodies.hook]}),
    )  # fmt: skip
    calls = []
    for label, prompt in PROMPTS.items():
        for system in (None, SYSTEM):
            kw: dict[str, Any] = {"system": system} if system else {}
            m = client.messages.create(
                model="claude-haiku-4-5", max_tokens=16,
                messages=[{"role": "user", "content": prompt},
                          {"role": "assistant", "content": "Noted."},
                          {"role": "user", "content": "Go on."}], **kw,
            )  # fmt: skip
            calls.append((label, "anthropic", "claude-haiku-4-5", bodies.sent[-1], m.id))
    rows = _ratio_rows(sim, calls)
    _print(rows)
    for row in rows:
        assert row[4] is False  # no Claude tokenizer offline
        _check_estimate(row[0], row[6])


@pytest.mark.parametrize("exact", [True, False], ids=["bpe-openai", "estimate"])
def test_openai_counts_against_the_simulator(
    sim: SimulatorServer, exact: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("bpe_openai")
    if not exact:
        monkeypatch.setattr(tokens, "_encoders", {})
        monkeypatch.setattr(tokens, "_missing", True)
    bodies = Bodies()
    client = openai.OpenAI(
        base_url=sim.openai_base_url, api_key="sk-test",
        http_client=httpx2.Client(event_hooks={"request": [bodies.hook]}),
    )  # fmt: skip
    calls = []
    for label, prompt in PROMPTS.items():
        r = client.chat.completions.create(
            model="gpt-4o", max_tokens=16,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        )  # fmt: skip
        calls.append((label, "openai", "gpt-4o", bodies.sent[-1], r.id))
        resp = client.responses.create(
            model="gpt-4o", max_output_tokens=16, instructions=SYSTEM, input=prompt
        )
        calls.append((label + "/resp", "openai", "gpt-4o", bodies.sent[-1], resp.id))
    rows = _ratio_rows(sim, calls)
    _print(rows)
    for label, *_, is_exact, _actual, ratio in rows:
        assert is_exact is (exact and not label.endswith("/resp"))
        if exact:
            # a real encoding against the simulator's chars/4: close on English and code
            if label.split("/")[0] in TEXT:
                assert 0.85 <= ratio <= 1.2, (label, ratio)
        else:
            _check_estimate(label, ratio)
