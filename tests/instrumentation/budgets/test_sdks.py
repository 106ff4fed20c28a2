"""Every SDK path (openai / anthropic × sync / async × plain / streamed) through the
guard, against the simulator and a real aggregator: a refusal surfaces as
``meterline.BudgetExceeded`` (never APIConnectionError, never retried); an allowed call
settles to exactly its usage; a provider failure that the SDK retries releases the
failed attempt's reservation."""

from __future__ import annotations

from decimal import Decimal

import pytest

import meterline
from meterline.instrumentation import consumer

from ._calls import IDS, MODELS, VARIANTS, call
from .conftest import cost, settled

RID = "meterline.budget.reservation_id"


@pytest.mark.parametrize(("sdk", "mode", "stream"), VARIANTS, ids=IDS)
def test_refusal_surfaces_as_budget_exceeded(sim, agg, guarded, who, sdk, mode, stream):
    agg.budget(who, limit="0.0001")
    before = len(sim.ledger.entries())
    with consumer(who, feature="chat"), pytest.raises(meterline.BudgetExceeded) as info:
        call(sim, sdk, mode, stream, max_tokens=1000)
    assert info.value.consumer == who and info.value.feature == "chat"
    assert info.value.budget["limit"] == "0.0001" and info.value.estimate > Decimal("0.0001")
    assert len(sim.ledger.entries()) == before
    assert guarded.spans() == []


@pytest.mark.parametrize(("sdk", "mode", "stream"), VARIANTS, ids=IDS)
def test_allowed_call_settles_to_its_usage(sim, agg, guarded, who, sdk, mode, stream):
    agg.budget(who, limit="5.00")
    with consumer(who):
        used_in, used_out = call(sim, sdk, mode, stream)
    settled()
    spans = guarded.spans()
    assert len(spans) == 1 and spans[0].attributes[RID].startswith("rsv_")
    state = agg.state(who)
    assert Decimal(state["reserved"]) == 0
    assert Decimal(state["spent"]) == cost(MODELS[sdk], used_in, used_out)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_retried_failure_releases_its_reservation(sim, agg, guarded, who, sdk):
    agg.budget(who, limit="5.00")
    with consumer(who):
        used_in, used_out = call(sim, sdk, "sync", False, headers={"x-simulator-fail": "500x1"})
    settled()
    spans = guarded.spans()
    assert len(spans) == 2  # the failed attempt and the retry, each with its reservation
    assert len({s.attributes[RID] for s in spans}) == 2
    state = agg.state(who)
    assert Decimal(state["reserved"]) == 0
    assert Decimal(state["spent"]) == cost(MODELS[sdk], used_in, used_out)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_provider_that_cannot_be_reached_releases_the_reservation(agg, guarded, who, mode):
    import socket

    import anthropic

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    agg.budget(who, limit="5.00")
    with consumer(who), pytest.raises(anthropic.APIConnectionError):
        if mode == "sync":
            anthropic.Anthropic(base_url=dead, api_key="sk", max_retries=0).messages.create(
                model="claude-sonnet-4", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
        else:

            async def go() -> None:
                async with anthropic.AsyncAnthropic(
                    base_url=dead, api_key="sk", max_retries=0
                ) as c:
                    await c.messages.create(model="claude-sonnet-4", max_tokens=50,
                                            messages=[{"role": "user", "content": "hi"}])  # fmt: skip

            import asyncio

            asyncio.run(go())
    settled()
    (span,) = guarded.spans()
    assert span.attributes[RID].startswith("rsv_") and "error.type" in span.attributes
    state = agg.state(who)
    assert Decimal(state["reserved"]) == 0 and Decimal(state["spent"]) == 0
