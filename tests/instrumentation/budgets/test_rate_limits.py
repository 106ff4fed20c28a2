"""Rate limits through the guard (issue 11 §4 enforced in the app) with the real SDKs
and a real aggregator: ``meterline.RateLimited`` with ``retry_after`` from every SDK path;
a call that alone exceeds a limit (``retry_after`` None); the bounded wait
(``METERLINE_RATE_LIMIT_WAIT``) — the short waits against a stand-in that answers
``rate_limited`` with a short ``retry_after`` (a real minute window would need a minute)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import pytest

import meterline
from meterline.instrumentation import consumer

from ._calls import IDS, VARIANTS, call
from .conftest import instrument_guarded, rate_limit, settled
from .test_failures import ALLOWED, BadAggregator

RID = "meterline.budget.reservation_id"


@pytest.mark.parametrize(("sdk", "mode", "stream"), VARIANTS, ids=IDS)
def test_requests_per_minute_raise_rate_limited(sim, agg, guarded, who, sdk, mode, stream):
    rate_limit(agg, who, limit="2", unit="requests")
    with consumer(who):
        call(sim, sdk, mode, stream)
        call(sim, sdk, mode, stream)
        before = len(sim.ledger.entries())
        with pytest.raises(meterline.RateLimited) as info:
            call(sim, sdk, mode, stream)
    exc = info.value
    assert 0 < exc.retry_after <= 60 and exc.consumer == who
    assert exc.limit["limit"] == "2" and exc.limit["unit"] == "requests"
    assert exc.unit == "requests" and exc.estimate == 1
    assert len(sim.ledger.entries()) == before  # not sent
    settled()
    spans = guarded.spans()
    assert len(spans) == 2 and all(s.attributes[RID].startswith("rsv_") for s in spans)


def test_a_call_larger_than_the_limit_never_waits(sim, agg, monkeypatch, who):
    rate_limit(agg, who, limit="100", unit="tokens")
    for _ in instrument_guarded(monkeypatch, agg.url, METERLINE_RATE_LIMIT_WAIT="30"):
        with consumer(who), pytest.raises(meterline.RateLimited) as info:
            call(sim, "openai", "sync", False, max_tokens=500)
        assert info.value.retry_after is None and "never fits" in str(info.value)


def test_a_full_window_beyond_the_wait_bound_raises_at_once(sim, agg, monkeypatch, who):
    rate_limit(agg, who, limit="1", unit="requests")
    for _ in instrument_guarded(monkeypatch, agg.url, METERLINE_RATE_LIMIT_WAIT="2"):
        with consumer(who):
            call(sim, "openai", "sync", False)
            with pytest.raises(meterline.RateLimited) as info:
                call(sim, "openai", "async", False)
        assert info.value.retry_after > 2


def test_tokens_per_minute_count_the_settled_usage(sim, agg, guarded, who):
    rate_limit(agg, who, limit="100000", unit="tokens")
    with consumer(who):
        used_in, used_out = call(sim, "openai", "sync", True, max_tokens=1000)
    settled()
    r = agg.http.get(f"/v1/rate-limits/{who}")
    (state,) = r.json() if isinstance(r.json(), list) else r.json()["rate_limits"]
    assert Decimal(state["used"]) == used_in + used_out  # the reserved 1000 were replaced


@pytest.fixture(scope="module")
def throttling() -> Iterator[BadAggregator]:
    server = BadAggregator()
    try:
        yield server
    finally:
        server.close()


RATE_LIMITED = {"allowed": False, "policy": "rate_limited", "reason": "the window is full",
                "retry_after": 0.2, "rate_limit": {"limit": "1", "unit": "requests"},
                "estimate": "1", "unit": "requests", "budget": None, "degrade": None}  # fmt: skip


@pytest.mark.parametrize(("refusals", "wait", "waits"), [(2, "1", True), (2, "0.3", False)])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_bounded_wait(sim, throttling, monkeypatch, refusals, wait, waits, mode):
    answers = [json.dumps(RATE_LIMITED).encode()] * refusals + [json.dumps(ALLOWED).encode()]
    throttling.script = answers
    throttling.mode = "script"
    for recorded in instrument_guarded(monkeypatch, throttling.url, METERLINE_RATE_LIMIT_WAIT=wait):
        with consumer("acme"):
            if waits:
                call(sim, "openai", mode, False)
                assert len(recorded.spans()) == 1
            else:
                with pytest.raises(meterline.RateLimited) as info:
                    call(sim, "openai", mode, False)
                assert info.value.retry_after == 0.2
                assert recorded.spans() == []
