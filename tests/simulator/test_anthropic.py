"""The real ``anthropic`` SDK (sync, async, streamed) against the simulator."""

from __future__ import annotations

import asyncio
import json

import anthropic
import httpx2

from meterline.simulator import SimulatorServer

MODEL = "claude-haiku-4-5"
SYSTEM = "You are the metering assistant. Follow the house rules closely. " * 90  # ~1450 tokens


def client(sim: SimulatorServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test")


def test_message_usage_excludes_cache_and_matches_ledger(sim: SimulatorServer, since: int) -> None:
    m = client(sim).messages.create(
        model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "Hello there"}]
    )
    assert m.id.startswith("msg_01") and m.model == "claude-haiku-4-5-20251001"
    assert m.stop_reason == "end_turn" and m.content[0].type == "text"
    u = m.usage
    assert u.cache_read_input_tokens == 0 and u.cache_creation_input_tokens == 0
    assert u.output_tokens == len(m.content[0].text.split())  # type: ignore[union-attr]
    (e,) = sim.ledger.entries(since=since)
    assert (e.provider, e.api, e.id, e.input_tokens, e.output_tokens) == (
        "anthropic", "messages", m.id, u.input_tokens, u.output_tokens,
    )  # fmt: skip
    assert e.usage == m.usage.model_dump(exclude_none=True)


def test_cache_writes_by_ttl_then_reads(sim: SimulatorServer, since: int) -> None:
    c = client(sim)
    system = [
        {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {
            "type": "text",
            "text": SYSTEM[:2000] + " extra 5m",
            "cache_control": {"type": "ephemeral"},
        },
    ]
    kw = {"model": "claude-sonnet-4-6", "max_tokens": 100, "system": system}
    first = c.messages.create(messages=[{"role": "user", "content": "a"}], **kw)  # type: ignore[arg-type]
    second = c.messages.create(messages=[{"role": "user", "content": "b"}], **kw)  # type: ignore[arg-type]
    u1, u2 = first.usage, second.usage
    assert u1.cache_read_input_tokens == 0
    assert u1.cache_creation is not None
    w1h, w5m = (
        u1.cache_creation.ephemeral_1h_input_tokens,
        u1.cache_creation.ephemeral_5m_input_tokens,
    )
    assert w1h >= 1024 and w5m > 0 and u1.cache_creation_input_tokens == w1h + w5m
    assert u2.cache_creation_input_tokens == 0
    assert u2.cache_read_input_tokens == w1h + w5m
    assert u1.input_tokens == u2.input_tokens  # plain input excludes the cache
    e1, e2 = sim.ledger.entries(since=since)
    # normalised: input includes cache reads and writes
    assert e1.input_tokens == u1.input_tokens + w1h + w5m
    assert (e1.cache_creation_input_tokens, e1.cache_creation_1h_input_tokens) == (w1h + w5m, w1h)
    assert e2.input_tokens == e1.input_tokens and e2.cache_read_input_tokens == w1h + w5m


def test_short_prefix_is_not_cached(sim: SimulatorServer) -> None:
    system = [{"type": "text", "text": "short", "cache_control": {"type": "ephemeral"}}]
    for _ in range(2):
        m = client(sim).messages.create(
            model=MODEL, max_tokens=50, system=system, messages=[{"role": "user", "content": "x"}]
        )  # type: ignore[arg-type]
        assert m.usage.cache_creation_input_tokens == 0 and m.usage.cache_read_input_tokens == 0


def test_thinking_tokens_count_in_output(sim: SimulatorServer, since: int) -> None:
    m = client(sim).messages.create(
        model="claude-sonnet-4-6",
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": "Think first."}],
    )
    assert [b.type for b in m.content] == ["thinking", "text"]
    details = m.usage.output_tokens_details
    assert details is not None and details.thinking_tokens > 0
    visible = len(m.content[1].text.split())  # type: ignore[union-attr]
    assert m.usage.output_tokens == details.thinking_tokens + visible
    (e,) = sim.ledger.entries(since=since)
    assert e.reasoning_output_tokens == details.thinking_tokens


def test_stream_events_and_usage_split(sim: SimulatorServer, since: int) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 300,
        "stream": True,
        "system": [
            {"type": "text", "text": SYSTEM + "stream", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [{"role": "user", "content": "hi"}],
    }
    with httpx2.Client() as http:
        r = http.post(
            sim.url + "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}
        )
    blocks = [b for b in r.text.split("\n\n") if b]
    names = [b.split("\n")[0].removeprefix("event: ") for b in blocks]
    data = [json.loads(b.split("\n")[1].removeprefix("data: ")) for b in blocks]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert {"content_block_start", "ping", "content_block_delta", "content_block_stop"} <= set(
        names
    )
    start_usage = data[0]["message"]["usage"]
    assert start_usage["output_tokens"] == 1 and start_usage["cache_creation_input_tokens"] > 1024
    assert set(data[-2]["usage"]) == {"output_tokens"}
    (e,) = sim.ledger.entries(since=since)
    assert e.output_tokens == data[-2]["usage"]["output_tokens"]
    assert e.input_tokens == (
        start_usage["input_tokens"] + start_usage["cache_creation_input_tokens"]
    )
    assert e.usage_sent and e.completed


def test_sdk_stream_helper_and_async(sim: SimulatorServer, since: int) -> None:
    with client(sim).messages.stream(
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "s"}]
    ) as s:
        text = s.get_final_text()
        final = s.get_final_message()
    assert final.usage.output_tokens == len(text.split())

    async def run() -> list[anthropic.types.Message]:
        ac = anthropic.AsyncAnthropic(base_url=sim.url, api_key="k")
        plain = await ac.messages.create(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "a"}]
        )
        async with ac.messages.stream(
            model=MODEL,
            max_tokens=2000,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "b"}],
        ) as s:
            streamed = await s.get_final_message()
        await ac.close()
        return [plain, streamed]

    plain, streamed = asyncio.run(run())
    assert streamed.content[0].type == "thinking"
    entries = sim.ledger.entries(since=since)
    assert [e.id for e in entries] == [final.id, plain.id, streamed.id]
    assert entries[2].output_tokens == streamed.usage.output_tokens
    assert (
        entries[2].reasoning_output_tokens == streamed.usage.output_tokens_details.thinking_tokens
    )  # type: ignore[union-attr]


def test_count_tokens_matches_messages_and_is_not_in_ledger(
    sim: SimulatorServer, since: int
) -> None:
    c = client(sim)
    messages = [{"role": "user", "content": "count me please"}]
    counted = c.messages.count_tokens(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert sim.ledger.entries(since=since) == []
    m = c.messages.create(model=MODEL, max_tokens=10, messages=messages)  # type: ignore[arg-type]
    assert counted.input_tokens == m.usage.input_tokens


def test_missing_max_tokens_is_anthropic_shaped_400(sim: SimulatorServer, since: int) -> None:
    with httpx2.Client() as http:
        r = http.post(
            sim.url + "/v1/messages",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["request_id"] == r.headers["request-id"]
    (e,) = sim.ledger.entries(since=since)
    assert (e.status, e.error_type, e.input_tokens) == (400, "400", 0)
