"""The real ``openai`` SDK (sync, async, streamed) against the simulator."""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import httpx2
import openai
import pytest

from meterline.simulator import SimulatorServer

LONG = "You are a careful assistant who answers in plain words. " * 100  # ~1400 tokens


def client(sim: SimulatorServer, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test", **kw)  # type: ignore[arg-type]


def test_chat_usage_matches_ledger_and_is_deterministic(sim: SimulatorServer, since: int) -> None:
    c = client(sim)
    msgs = [{"role": "user", "content": "Summarise the meter in one line."}]
    a = c.chat.completions.create(model="gpt-4o-mini", messages=msgs)  # type: ignore[arg-type]
    b = c.chat.completions.create(model="gpt-4o-mini", messages=msgs)  # type: ignore[arg-type]
    assert a.id.startswith("chatcmpl-") and a.id != b.id
    assert a.model == "gpt-4o-mini-2024-07-18"
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage == b.usage and a.usage is not None
    u = a.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.completion_tokens == len(a.choices[0].message.content.split())  # type: ignore[union-attr]
    assert u.completion_tokens_details and u.completion_tokens_details.reasoning_tokens == 0
    entries = sim.ledger.entries(since=since)
    assert [e.id for e in entries] == [a.id, b.id]
    e = entries[0]
    assert (e.provider, e.api, e.operation, e.stream, e.status) == (
        "openai", "chat.completions", "chat", False, 200,
    )  # fmt: skip
    assert (e.input_tokens, e.output_tokens) == (u.prompt_tokens, u.completion_tokens)
    assert e.usage_sent and e.completed and e.response_model == a.model


def test_seed_and_prompt_change_the_counts(sim: SimulatorServer) -> None:
    c = client(sim)
    outs = {
        c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"question {i}"}]
        ).usage.completion_tokens  # type: ignore[union-attr]
        for i in range(8)
    }
    assert len(outs) > 1


def test_reasoning_model_counts_reasoning_inside_output(sim: SimulatorServer, since: int) -> None:
    c = client(sim)
    r = c.chat.completions.create(
        model="o4-mini", messages=[{"role": "user", "content": "think"}], reasoning_effort="low"
    )
    u = r.usage
    assert u is not None and u.completion_tokens_details is not None
    reasoning = u.completion_tokens_details.reasoning_tokens or 0
    assert 64 <= reasoning <= 256
    visible = len((r.choices[0].message.content or "").split())
    assert u.completion_tokens == reasoning + visible
    (e,) = sim.ledger.entries(since=since)
    assert e.reasoning_output_tokens == reasoning and e.output_tokens == u.completion_tokens


def test_output_budget_truncates_with_finish_reason_length(sim: SimulatorServer) -> None:
    c = client(sim)
    r = c.chat.completions.create(
        model="o3-mini",
        messages=[{"role": "user", "content": "x"}],
        max_completion_tokens=40,
        extra_headers={"x-simulator-reasoning-tokens": "30", "x-simulator-output-tokens": "25"},
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 40
    assert r.usage.completion_tokens_details.reasoning_tokens == 30  # type: ignore[union-attr]


def test_long_prompt_is_cached_in_128_token_steps(sim: SimulatorServer) -> None:
    c = client(sim)
    msgs = [{"role": "system", "content": LONG + "cache-test"}, {"role": "user", "content": "a"}]
    first = c.chat.completions.create(model="gpt-4.1", messages=msgs)  # type: ignore[arg-type]
    msgs[1]["content"] = "a different question"
    second = c.chat.completions.create(model="gpt-4.1", messages=msgs)  # type: ignore[arg-type]
    assert first.usage and second.usage
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]
    cached = second.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    assert cached and cached >= 1024 and cached % 128 == 0
    assert cached <= second.usage.prompt_tokens
    short = c.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "a"}])
    assert short.usage.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]


def test_stream_without_include_usage_has_no_usage_chunk(sim: SimulatorServer, since: int) -> None:
    c = client(sim)
    chunks = list(
        c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(ch.choices for ch in chunks)  # no usage-only chunk with choices: []
    assert all(ch.usage is None for ch in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    (e,) = sim.ledger.entries(since=since)
    assert e.stream and e.completed and not e.usage_sent and e.usage is None
    assert e.output_tokens == len(text.split()) and e.id == chunks[0].id


def test_stream_include_usage_raw_wire_format(sim: SimulatorServer, since: int) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx2.Client() as http:
        r = http.post(sim.openai_base_url + "/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [ln for ln in r.text.split("\n\n") if ln]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    assert all("usage" in ch and ch["usage"] is None for ch in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    (e,) = sim.ledger.entries(since=since)
    assert e.usage_sent and e.usage == chunks[-1]["usage"]


def test_stream_include_usage_through_sdk(sim: SimulatorServer, since: int) -> None:
    c = client(sim)
    stream = c.chat.completions.create(
        model="o4-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    (e,) = sim.ledger.entries(since=since)
    assert e.output_tokens == last.usage.completion_tokens
    assert e.reasoning_output_tokens == last.usage.completion_tokens_details.reasoning_tokens  # type: ignore[union-attr]


def test_async_client_concurrent_calls_each_in_ledger(sim: SimulatorServer, since: int) -> None:
    async def run() -> list[openai.types.chat.ChatCompletion]:
        ac = openai.AsyncOpenAI(base_url=sim.openai_base_url, api_key="sk")
        calls = [
            ac.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}]
            )
            for i in range(40)
        ]
        out = await asyncio.gather(*calls)
        await ac.close()
        return out

    results = asyncio.run(run())
    entries = {e.id: e for e in sim.ledger.entries(since=since)}
    assert len(entries) == 40 == len({r.id for r in results})
    for r in results:
        assert r.usage is not None
        assert entries[r.id].output_tokens == r.usage.completion_tokens
    assert sim.ledger.totals(since=since)["input_tokens"] == sum(
        r.usage.prompt_tokens  # type: ignore[union-attr]
        for r in results
    )


def test_async_stream(sim: SimulatorServer, since: int) -> None:
    async def run() -> list[object]:
        ac = openai.AsyncOpenAI(base_url=sim.openai_base_url, api_key="sk")
        s = await ac.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "stream"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [ch async for ch in s]
        await ac.close()
        return chunks

    chunks = asyncio.run(run())
    (e,) = sim.ledger.entries(since=since)
    assert chunks[-1].usage.prompt_tokens == e.input_tokens  # type: ignore[attr-defined]


def test_responses_plain_and_streamed(sim: SimulatorServer, since: int) -> None:
    c = client(sim)
    r = c.responses.create(model="gpt-5-mini", input="Explain tokens", reasoning={"effort": "low"})
    assert r.id.startswith("resp_") and r.status == "completed"
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens > 0
    assert r.output[0].type == "reasoning" and r.output_text
    assert r.usage.output_tokens == r.usage.output_tokens_details.reasoning_tokens + len(
        r.output_text.split()
    )
    with c.responses.stream(model="gpt-4o", input="stream please", instructions="Be brief") as s:
        kinds = [ev.type for ev in s]
        final = s.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    a, b = sim.ledger.entries(since=since)
    assert (a.id, a.output_tokens, a.reasoning_output_tokens) == (
        r.id, r.usage.output_tokens, r.usage.output_tokens_details.reasoning_tokens,
    )  # fmt: skip
    assert final.usage is not None
    assert (b.id, b.stream, b.input_tokens, b.output_tokens, b.usage_sent) == (
        final.id, True, final.usage.input_tokens, final.usage.output_tokens, True,
    )  # fmt: skip


def test_responses_raw_events_have_sequence_numbers(sim: SimulatorServer) -> None:
    c = client(sim)
    events = list(c.responses.create(model="gpt-4o", input=[{"role": "user", "content": "x"}],
                                     stream=True))  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is not None


def test_embeddings_base64_default_and_float(sim: SimulatorServer, since: int) -> None:
    c = client(sim)
    r = c.embeddings.create(model="text-embedding-3-small", input=["hello world", "abc"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 1536
    assert abs(sum(v * v for v in r.data[0].embedding) - 1.0) < 1e-3
    assert r.usage.prompt_tokens == 3 + 1
    f = c.embeddings.create(
        model="text-embedding-3-large", input="hello world", encoding_format="float", dimensions=8
    )
    assert len(f.data[0].embedding) == 8
    with httpx2.Client() as http:
        raw = http.post(
            sim.openai_base_url + "/embeddings",
            json={"model": "text-embedding-3-small", "input": "hello world", "dimensions": 4,
                  "encoding_format": "base64"},
        ).json()  # fmt: skip
    decoded = struct.unpack("<4f", base64.b64decode(raw["data"][0]["embedding"]))
    assert len(decoded) == 4
    entries = sim.ledger.entries(since=since)
    assert [e.operation for e in entries[:2]] == ["embeddings", "embeddings"]
    assert entries[0].input_tokens == 4 and entries[0].output_tokens == 0


def test_legacy_completions_default_max_tokens_and_stream(sim: SimulatorServer, since: int) -> None:
    c = client(sim)
    r = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    assert r.id.startswith("cmpl-") and r.usage is not None
    assert r.usage.completion_tokens <= 16
    chunks = list(
        c.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="x", stream=True,
            stream_options={"include_usage": True}, max_tokens=100,
        )
    )  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    a, b = sim.ledger.entries(since=since)
    assert a.operation == b.operation == "text_completion"
    assert b.output_tokens == chunks[-1].usage.completion_tokens


def test_azure_deployment_path(sim: SimulatorServer, since: int) -> None:
    az = openai.AzureOpenAI(
        azure_endpoint=sim.url, api_key="k", api_version="2024-10-21", azure_deployment="prod-4o"
    )
    r = az.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "x"}])
    (e,) = sim.ledger.entries(since=since)
    assert e.provider == "azure.ai.openai" and e.id == r.id and e.request_model == "prod-4o"


def test_models_list(sim: SimulatorServer) -> None:
    ids = [m.id for m in client(sim).models.list()]
    assert "gpt-4o" in ids


@pytest.mark.parametrize("bad", [{"model": "gpt-4o"}, {"messages": [{"role": "user"}]}])
def test_bad_request_is_openai_shaped_400(sim: SimulatorServer, bad: dict[str, object]) -> None:
    with httpx2.Client() as http:
        r = http.post(sim.openai_base_url + "/chat/completions", json=bad)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "Missing required parameter" in r.json()["error"]["message"]
