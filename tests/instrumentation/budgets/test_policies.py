"""The policies of a refused call, with the real SDKs, the simulator and a real
aggregator: degrade (cap max_tokens; switch to the cheaper model; both), checkpoint
(allow, block, a rewritten request, a failing callback, none registered, an entry
point)."""

from __future__ import annotations

import json
import textwrap
from decimal import Decimal
from typing import Any

import openai
import pytest

import meterline
from meterline.instrumentation import consumer, on_budget
from meterline.instrumentation.budgets import ALLOW, BLOCK, Checkpoint, _checkpoint

from ..conftest import Recorded
from ._calls import MESSAGES, call
from .conftest import Aggregator, cost, settled

RID = "meterline.budget.reservation_id"
DEGRADED = "meterline.budget.degraded"
BOTH = {"max_tokens": True, "model": {"gpt-4o": "gpt-4o-mini"}}


def one_span(recorded: Recorded) -> dict[str, Any]:
    settled()
    return recorded.one()


def check_within(agg: Aggregator, who: str, limit: str) -> dict[str, Any]:
    state = agg.state(who)
    assert Decimal(state["reserved"]) == 0
    assert 0 < Decimal(state["spent"]) <= Decimal(limit)
    return state


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_degrade_caps_max_tokens_to_what_fits(sim, agg, guarded, who, sdk):
    limit = "0.003" if sdk == "openai" else "0.004"
    agg.budget(who, limit=limit, policy="degrade", degrade={"max_tokens": True})
    with consumer(who):
        _, used_out = call(sim, sdk, "sync", False, max_tokens=1000,
                                 headers={"x-simulator-output-tokens": "1000"})  # fmt: skip
    attrs = one_span(guarded)
    cap = attrs["gen_ai.request.max_tokens"]
    assert 100 < cap < 1000 and attrs[DEGRADED] is True and attrs[RID].startswith("rsv_")
    assert used_out == cap  # the provider was asked for (and gave) at most the cap
    check_within(agg, who, limit)


def test_degrade_switches_to_the_cheaper_model(sim, agg, guarded, who):
    agg.budget(who, limit="0.001", policy="degrade", degrade={"model": {"gpt-4o": "gpt-4o-mini"}})
    with consumer(who):
        used_in, used_out = call(sim, "openai", "sync", False, max_tokens=1000)
    attrs = one_span(guarded)
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini" and attrs[DEGRADED] is True
    assert attrs["gen_ai.request.max_tokens"] == 1000
    assert sim.ledger.entries()[-1].request_model == "gpt-4o-mini"
    state = check_within(agg, who, "0.001")
    assert Decimal(state["spent"]) == cost("gpt-4o-mini", used_in, used_out)


@pytest.mark.parametrize("stream", [False, True])
def test_degrade_switches_model_then_caps(sim, agg, guarded, who, stream):
    agg.budget(who, limit="0.0005", policy="degrade", degrade=BOTH)
    with consumer(who):
        used_in, used_out = call(sim, "openai", "async", stream, max_tokens=1000,
                                 headers={"x-simulator-output-tokens": "1000"})  # fmt: skip
    attrs = one_span(guarded)
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini" and attrs[DEGRADED] is True
    assert 100 < attrs["gen_ai.request.max_tokens"] < 1000
    assert used_out == attrs["gen_ai.request.max_tokens"]
    state = check_within(agg, who, "0.0005")
    assert Decimal(state["spent"]) == cost("gpt-4o-mini", used_in, used_out)


def test_degrade_blocks_when_nothing_fits(sim, agg, guarded, who):
    agg.budget(who, limit="0.000001", policy="degrade", degrade=BOTH)
    with consumer(who), pytest.raises(meterline.BudgetExceeded) as info:
        call(sim, "openai", "sync", False, max_tokens=1000)
    assert info.value.policy == "degrade"
    assert guarded.spans() == []


# --- checkpoint ------------------------------------------------------------------------

CHECKPOINT = {"limit": "0.003", "policy": "checkpoint"}


def test_checkpoint_allow_sends_the_call_unreserved(sim, agg, guarded, who):
    agg.budget(who, **CHECKPOINT)
    seen: list[Checkpoint] = []
    on_budget(lambda info: seen.append(info) or ALLOW)
    with consumer(who, feature="summarize"):
        call(sim, "openai", "sync", False, max_tokens=1000)
    attrs = one_span(guarded)
    assert RID not in attrs and DEGRADED not in attrs
    (info,) = seen
    assert (info.consumer, info.feature, info.model, info.max_tokens) == (
        who, "summarize", "gpt-4o", 1000)  # fmt: skip
    assert info.budget["limit"] == "0.003" and info.estimate > Decimal("0.003")
    assert info.body["messages"] == MESSAGES and info.input_tokens > 0


def test_checkpoint_block_raises(sim, agg, guarded, who):
    agg.budget(who, **CHECKPOINT)
    on_budget(lambda info: BLOCK)
    with consumer(who), pytest.raises(meterline.BudgetExceeded) as info:
        call(sim, "anthropic", "async", True, max_tokens=1000)
    assert "checkpoint" in info.value.reason
    assert guarded.spans() == []


def test_checkpoint_rewrite_is_reserved_and_sent(sim, agg, guarded, who):
    agg.budget(who, **CHECKPOINT)
    on_budget(lambda info: {**info.body, "max_tokens": 50})
    with consumer(who):
        _, used_out = call(sim, "openai", "sync", True, max_tokens=1000,
                           headers={"x-simulator-output-tokens": "1000"})  # fmt: skip
    attrs = one_span(guarded)
    assert attrs["gen_ai.request.max_tokens"] == 50 and used_out == 50
    assert attrs[RID].startswith("rsv_") and attrs[DEGRADED] is True
    check_within(agg, who, "0.003")


@pytest.mark.parametrize(
    "callback",
    [
        lambda info: 1 / 0,
        lambda info: "maybe",
        lambda info: {**info.body, "max_tokens": 5000},
        None,
    ],
    ids=["raises", "nonsense", "rewrite-still-too-big", "none-registered"],
)
def test_checkpoint_failures_block(sim, agg, guarded, who, callback):
    agg.budget(who, **CHECKPOINT)
    on_budget(callback)
    before = len(sim.ledger.entries())
    with consumer(who), pytest.raises(meterline.BudgetExceeded):
        call(sim, "openai", "sync", False, max_tokens=1000)
    assert len(sim.ledger.entries()) == before


def test_checkpoint_entry_point(sim, agg, guarded, who, tmp_path, monkeypatch):
    agg.budget(who, **CHECKPOINT)
    (tmp_path / "mycheck.py").write_text(textwrap.dedent("""
        CALLS = []
        def decide(info):
            CALLS.append(info.model)
            return {**info.body, "max_tokens": 40}
    """))  # fmt: skip
    dist = tmp_path / "mycheck-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mycheck\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[meterline.budget_checkpoint]\nmine = mycheck:decide\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(_checkpoint._state, "loaded", False)
    monkeypatch.setitem(_checkpoint._state, "entry", None)
    with consumer(who):
        call(sim, "openai", "sync", False, max_tokens=1000)
    attrs = one_span(guarded)
    assert attrs["gen_ai.request.max_tokens"] == 40
    import mycheck  # type: ignore[import-not-found]

    assert mycheck.CALLS == ["gpt-4o"]


def test_on_budget_takes_a_callable():
    with pytest.raises(TypeError, match="callable"):
        on_budget("allow")  # type: ignore[arg-type]


def test_rewrite_keeps_the_app_object_untouched(sim, agg, guarded, who):
    """The app's own request (its messages list) is never mutated by a rewrite."""
    agg.budget(who, limit="0.003", policy="degrade", degrade={"max_tokens": True})
    messages = json.loads(json.dumps(MESSAGES))
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk")
    with consumer(who):
        client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=1000)
    assert messages == MESSAGES
