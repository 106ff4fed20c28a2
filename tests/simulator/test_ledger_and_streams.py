"""The ledger over HTTP, streams cut short, Gemini, the cache's TTLs, the public API."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import anthropic
import httpx2
import openai
import pytest

import meterline.simulator
from meterline.simulator import SimulatorServer
from meterline.simulator._cache import Breakpoint, PromptCache

MSG = [{"role": "user", "content": "x"}]


def test_public_api() -> None:
    assert sorted(meterline.simulator.__all__) == [
        "Ledger", "LedgerEntry", "SimulatorConfig", "SimulatorServer", "create_app", "serve",
        "start",
    ]  # fmt: skip


def test_ledger_endpoint_filters_totals_and_clear() -> None:
    with meterline.simulator.start() as sim:
        oa = openai.OpenAI(base_url=sim.openai_base_url, api_key="k")
        an = anthropic.Anthropic(base_url=sim.url, api_key="k")
        r1 = oa.chat.completions.create(
            model="gpt-4o", messages=MSG, extra_headers={"x-simulator-tag": "t1"}
        )  # type: ignore[arg-type]
        m = an.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MSG)  # type: ignore[arg-type]
        with httpx2.Client(base_url=sim.url) as http:
            all_ = http.get("/_simulator/ledger").json()
            tagged = http.get("/_simulator/ledger", params={"tag": "t1"}).json()
            anth = http.get("/_simulator/ledger", params={"provider": "anthropic"}).json()
            later = http.get("/_simulator/ledger", params={"since": 1}).json()
            assert http.get("/_simulator/ledger", params={"bogus": 1}).status_code == 400
            assert r1.usage and all_["totals"] == {
                "requests": 2, "failed_requests": 0,
                "input_tokens": r1.usage.prompt_tokens + m.usage.input_tokens,
                "output_tokens": r1.usage.completion_tokens + m.usage.output_tokens,
                "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
                "reasoning_output_tokens": 0,
            }  # fmt: skip
            assert [e["id"] for e in tagged["entries"]] == [r1.id]
            assert [e["id"] for e in anth["entries"]] == [m.id]
            assert [e["seq"] for e in later["entries"]] == [2]
            assert http.delete("/_simulator/ledger").status_code == 200
            assert http.get("/_simulator/ledger").json()["entries"] == []
            assert http.get("/_simulator/health").json() == {"status": "ok"}


def test_baggage_and_traceparent_recorded(sim: SimulatorServer, since: int) -> None:
    openai.OpenAI(base_url=sim.openai_base_url, api_key="k").chat.completions.create(
        model="gpt-4o", messages=MSG,  # type: ignore[arg-type]
        extra_headers={
            "baggage": "meterline.consumer.id=acme,meterline.feature=sum%20mary",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )  # fmt: skip
    (e,) = sim.ledger.entries(since=since)
    assert e.baggage == {"meterline.consumer.id": "acme", "meterline.feature": "sum mary"}
    assert e.traceparent and e.traceparent.startswith("00-0af7")


def test_server_cuts_openai_stream(sim: SimulatorServer, since: int) -> None:
    c = openai.OpenAI(base_url=sim.openai_base_url, api_key="k", max_retries=0)
    got = []
    with pytest.raises((openai.APIError, httpx2.HTTPError)):
        for chunk in c.chat.completions.create(
            model="gpt-4o", messages=MSG, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
            extra_headers={"x-simulator-cut-after": "3", "x-simulator-output-tokens": "20"},
        ):  # fmt: skip
            got.append(chunk)
    assert len(got) == 3
    (e,) = sim.ledger.entries(since=since)
    assert (e.events_sent, e.completed, e.usage_sent) == (3, False, False)
    assert e.output_tokens == 20  # what the provider would have reported


def test_server_cuts_anthropic_stream_after_message_start(sim: SimulatorServer, since: int) -> None:
    c = anthropic.Anthropic(base_url=sim.url, api_key="k", max_retries=0)
    events = []
    with pytest.raises((anthropic.APIError, httpx2.HTTPError)):
        for ev in c.messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=MSG, stream=True,  # type: ignore[arg-type]
            extra_headers={"x-simulator-cut-after": "4"},
        ):  # fmt: skip
            events.append(ev)
    assert events[0].type == "message_start"
    (e,) = sim.ledger.entries(since=since)
    assert not e.completed and not e.usage_sent
    assert events[0].message.usage.input_tokens == e.input_tokens  # type: ignore[union-attr]


def test_client_stops_reading_slow_stream(sim: SimulatorServer, since: int) -> None:
    c = openai.OpenAI(base_url=sim.openai_base_url, api_key="k")
    stream = c.chat.completions.create(
        model="gpt-4o", messages=MSG, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
        extra_headers={"x-simulator-chunk-delay-ms": "50", "x-simulator-output-tokens": "40"},
    )  # fmt: skip
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    time.sleep(0.5)  # the stream would run ~2 s; the server must notice the disconnect
    (e,) = sim.ledger.entries(since=since)
    assert not e.completed and not e.usage_sent and e.events_sent < 15


def test_gemini_generate_and_stream(sim: SimulatorServer, since: int) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hello gemini"}]}],
        "generationConfig": {"maxOutputTokens": 1000},
    }
    with httpx2.Client(base_url=sim.url) as http:
        plain = http.post("/v1beta/models/gemini-2.5-flash:generateContent", json=body).json()
        sse = http.post(
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            params={"alt": "sse"},
            json=body,
        )
    usage = plain["usageMetadata"]
    assert usage["thoughtsTokenCount"] > 0
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )
    chunks = [json.loads(b.removeprefix("data: ")) for b in sse.text.split("\n\n") if b]
    assert "usageMetadata" in chunks[-1] and "usageMetadata" not in chunks[0]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    a, b = sim.ledger.entries(since=since)
    assert a.provider == "gcp.gemini" and a.output_tokens == (
        usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )
    assert b.stream and b.reasoning_output_tokens == 0
    assert b.output_tokens == chunks[-1]["usageMetadata"]["candidatesTokenCount"]


def test_anthropic_cache_expires_after_ttl_and_renews_on_hit() -> None:
    now = [0.0]
    cache = PromptCache(min_tokens=10, clock=lambda: now[0])
    text = "x" * 400
    bp5 = [Breakpoint(200, "5m")]
    assert cache.anthropic("m", text, bp5).write_5m == 50
    now[0] = 299
    assert cache.anthropic("m", text, bp5).read == 50  # hit renews the 5 minutes
    now[0] = 598
    assert cache.anthropic("m", text, bp5).read == 50
    now[0] = 1000
    assert cache.anthropic("m", text, bp5).read == 0
    assert cache.anthropic("other", text, bp5).read == 0  # per model
    bp1h = [Breakpoint(200, "1h")]
    cache.anthropic("m", "y" * 400, bp1h)
    now[0] += 3000
    assert cache.anthropic("m", "y" * 400, bp1h).read == 50


def test_cli_serves_on_a_free_port() -> None:
    code = (
        "import typer\n"
        "from meterline.simulator.cli import register\n"
        "app = typer.Typer()\n"
        "@app.callback()\n"
        "def root() -> None: ...\n"
        "register(app)\n"
        "app()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("meterline simulator listening on http://127.0.0.1:")
        url = line.split()[-1]
        deadline = time.monotonic() + 10
        while True:
            try:
                r = httpx2.get(url + "/_simulator/health")
                break
            except httpx2.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert r.json() == {"status": "ok"}
        c = openai.OpenAI(base_url=url + "/v1", api_key="k")
        assert c.chat.completions.create(model="gpt-4o", messages=MSG).usage  # type: ignore[arg-type]
    finally:
        proc.terminate()
        proc.wait(10)
