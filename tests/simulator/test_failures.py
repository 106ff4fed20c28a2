"""Failures on demand and the SDKs' own retries."""

from __future__ import annotations

import anthropic
import httpx2
import openai
import pytest

from meterline.simulator import SimulatorServer
from meterline.simulator._failures import parse_fail_spec, status_for_attempt

FAST = {"x-simulator-retry-after-ms": "5"}
MSG = [{"role": "user", "content": "x"}]


def test_fail_spec_grammar() -> None:
    items = parse_fail_spec("429x1, 500x2,503")
    assert items == [(429, 1), (500, 2), (503, None)]
    assert [status_for_attempt(items, a) for a in range(6)] == [429, 500, 500, 503, 503, 503]
    assert status_for_attempt(parse_fail_spec("500x2"), 2) is None
    with pytest.raises(ValueError, match="bad x-simulator-fail item 'oops'"):
        parse_fail_spec("oops")
    with pytest.raises(ValueError, match="not an error status"):
        parse_fail_spec("200")


def test_openai_429_then_success_via_sdk_retry(sim: SimulatorServer, since: int) -> None:
    c = openai.OpenAI(base_url=sim.openai_base_url, api_key="k")
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=MSG,
        extra_headers={"x-simulator-fail": "429x1"},  # type: ignore[arg-type]
    )
    r = raw.parse()
    assert raw.retries_taken == 1
    failed, ok = sim.ledger.entries(since=since)
    assert (failed.status, failed.error_type, failed.attempt, failed.output_tokens) == (
        429,
        "429",
        0,
        0,
    )
    assert (ok.status, ok.attempt, ok.id) == (200, 1, r.id)
    assert sim.ledger.totals(since=since)["requests"] == 2
    assert sim.ledger.totals(since=since)["failed_requests"] == 1


def test_openai_500_always_exhausts_retries(sim: SimulatorServer, since: int) -> None:
    c = openai.OpenAI(base_url=sim.openai_base_url, api_key="k", max_retries=2)
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(
            model="gpt-4o",
            messages=MSG,
            extra_headers={"x-simulator-fail": "500", **FAST},  # type: ignore[arg-type]
        )
    assert info.value.status_code == 500
    assert info.value.body["type"] == "server_error"  # type: ignore[index]
    assert [(e.status, e.attempt) for e in sim.ledger.entries(since=since)] == [
        (500, 0), (500, 1), (500, 2),
    ]  # fmt: skip


def test_openai_500x2_streamed_succeeds_on_third_attempt(sim: SimulatorServer, since: int) -> None:
    c = openai.OpenAI(base_url=sim.openai_base_url, api_key="k")
    chunks = list(
        c.chat.completions.create(
            model="gpt-4o", messages=MSG, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
            extra_headers={"x-simulator-fail": "500x2", **FAST},
        )
    )  # fmt: skip
    entries = sim.ledger.entries(since=since)
    assert [e.status for e in entries] == [500, 500, 200]
    assert entries[-1].output_tokens == chunks[-1].usage.completion_tokens  # type: ignore[union-attr]


def test_429_headers_and_body(sim: SimulatorServer) -> None:
    with httpx2.Client() as http:
        r = http.post(
            sim.openai_base_url + "/chat/completions",
            json={"model": "gpt-4o", "messages": MSG},
            headers={"x-simulator-fail": "429"},
        )
        a = http.post(
            sim.url + "/v1/messages",
            json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": MSG},
            headers={"x-simulator-fail": "529"},
        )
    assert r.status_code == 429
    assert r.headers["retry-after-ms"] == "20" and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert a.status_code == 529 and "retry-after" not in a.headers
    assert a.json()["error"]["type"] == "overloaded_error"


def test_anthropic_529_and_429_retried_by_sdk(sim: SimulatorServer, since: int) -> None:
    c = anthropic.Anthropic(base_url=sim.url, api_key="k")
    m = c.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=MSG,  # type: ignore[arg-type]
        extra_headers={"x-simulator-fail": "529x1,429x1", **FAST},
    )  # fmt: skip
    assert [e.status for e in sim.ledger.entries(since=since)] == [529, 429, 200]
    with pytest.raises(anthropic.RateLimitError) as info:
        c.with_options(max_retries=0).messages.create(
            model="claude-haiku-4-5", max_tokens=50, messages=MSG,  # type: ignore[arg-type]
            extra_headers={"x-simulator-fail": "429"},
        )  # fmt: skip
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert m.usage.output_tokens > 0


def test_clients_without_retry_header_are_counted(sim: SimulatorServer) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "count-attempts"}]}
    with httpx2.Client() as http:
        codes = [
            http.post(sim.openai_base_url + "/chat/completions", json=body,
                      headers={"x-simulator-fail": "503x2"}).status_code
            for _ in range(3)
        ]  # fmt: skip
    assert codes == [503, 503, 200]


def test_bad_fail_spec_is_400(sim: SimulatorServer) -> None:
    with httpx2.Client() as http:
        r = http.post(
            sim.openai_base_url + "/chat/completions",
            json={"model": "gpt-4o", "messages": MSG},
            headers={"x-simulator-fail": "teapot"},
        )
    assert r.status_code == 400 and "teapot" in r.json()["error"]["message"]


def test_api_key_required_when_configured() -> None:
    from meterline.simulator import SimulatorConfig, start

    with start(SimulatorConfig(api_key="secret")) as sim:
        bad = openai.OpenAI(base_url=sim.openai_base_url, api_key="wrong")
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="gpt-4o", messages=MSG)  # type: ignore[arg-type]
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=sim.url, api_key="wrong").messages.create(
                model="claude-haiku-4-5",
                max_tokens=5,
                messages=MSG,  # type: ignore[arg-type]
            )
        good = openai.OpenAI(base_url=sim.openai_base_url, api_key="secret")
        assert good.chat.completions.create(model="gpt-4o", messages=MSG).id  # type: ignore[arg-type]
        assert (
            anthropic.Anthropic(base_url=sim.url, api_key="secret")
            .messages.create(
                model="claude-haiku-4-5",
                max_tokens=5,
                messages=MSG,  # type: ignore[arg-type]
            )
            .id
        )
