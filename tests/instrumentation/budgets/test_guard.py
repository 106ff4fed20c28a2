"""The budget guard (issue 11 §3) with the real SDKs, the provider simulator and a real
aggregator: block, settle (non-streamed, streamed, cut short), release, the span's
reservation id."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

import meterline
from meterline.instrumentation import consumer
from meterline.simulator import SimulatorServer

from .conftest import cost, settled

MESSAGES = [{"role": "user", "content": "Say something about foxes and their dens."}]
RID = "meterline.budget.reservation_id"


def oai(sim: SimulatorServer, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=2, **kw)


def last_entry(sim: SimulatorServer) -> Any:
    return sim.ledger.entries()[-1]


def test_block_raises_budget_exceeded_and_sends_nothing(sim, agg, guarded, who):
    agg.budget(who, limit="0.0001")
    before = len(sim.ledger.entries())
    with consumer(who), pytest.raises(meterline.BudgetExceeded) as info:
        oai(sim).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=500)
    exc = info.value
    assert exc.consumer == who and exc.feature is None and exc.policy == "block"
    assert exc.budget["limit"] == "0.0001" and exc.unit == "USD"
    assert exc.spent == 0 and exc.reserved == 0
    assert exc.estimate > Decimal("0.0001")  # 500 output tokens alone cost 0.0048
    assert len(sim.ledger.entries()) == before  # never sent: no retry either
    assert guarded.spans() == []


def test_non_streamed_call_reserves_then_settles_to_its_usage(sim, agg, guarded, who):
    agg.budget(who, limit="1.00")
    with consumer(who):
        out = oai(sim).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=60)
    attrs = guarded.one()
    assert attrs[RID].startswith("rsv_")
    settled()
    state = agg.state(who)
    entry = last_entry(sim)
    actual = cost("gpt-4o", out.usage.prompt_tokens, out.usage.completion_tokens)
    assert out.usage.prompt_tokens == entry.input_tokens
    assert Decimal(state["reserved"]) == 0
    assert Decimal(state["spent"]) == actual


def test_streamed_call_settles_when_the_stream_ends(sim, agg, guarded, who):
    agg.budget(who, limit="1.00")
    with consumer(who):
        stream = oai(sim).chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=60, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text
    settled()
    attrs = guarded.one()
    assert attrs[RID].startswith("rsv_")
    state = agg.state(who)
    usage = last_entry(sim)
    assert Decimal(state["reserved"]) == 0
    assert Decimal(state["spent"]) == cost("gpt-4o", usage.input_tokens, usage.output_tokens)


def test_stream_cut_short_settles_from_what_was_metered(sim, agg, guarded, who):
    agg.budget(who, limit="1.00")
    client = oai(sim, default_headers={"x-simulator-cut-after": "4"})
    with consumer(who), pytest.raises(openai.APIError):
        stream = client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=200, stream=True
        )
        for _ in stream:
            pass
    settled()
    attrs = guarded.one()
    assert attrs["meterline.usage.estimated"] is True
    state = agg.state(who)
    assert Decimal(state["reserved"]) == 0
    expected = cost(
        "gpt-4o", attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]
    )
    assert Decimal(state["spent"]) == expected > 0
