"""The app the SDK metering tests run (``python app_sdk.py OUT.json [SCENARIO ...]``).

It uses only the real ``openai`` and ``anthropic`` SDKs (base URLs from
``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``) and meterline's attribution. Each scenario
runs under its own consumer id (its name, plus ``E2E_CONSUMER_SUFFIX``) and tags its
requests ``x-simulator-tag: <consumer>`` so the simulator's ledger can be filtered the
same way. What the app observed (texts, chunk shapes, usage, exceptions — never ids) is
written to OUT.json so a run with and a run without instrumentation can be compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai

SUFFIX = os.environ.get("E2E_CONSUMER_SUFFIX", "")
FAST = {"x-simulator-retry-after-ms": "20"}
LONG = "Rules of the metering house: count once, lose nothing, price exactly. " * 80
HAIKU = "claude-haiku-4-5"
MSG = [{"role": "user", "content": "Say something about meters."}]


@contextlib.contextmanager
def attributed(name: str) -> Iterator[None]:
    if name.startswith("baggage_"):  # the OTel baggage path, no meterline API
        from opentelemetry import baggage, context

        token = context.attach(baggage.set_baggage("meterline.consumer.id", name + SUFFIX))
        try:
            yield
        finally:
            context.detach(token)
        return
    from meterline.instrumentation import consumer

    with consumer(name + SUFFIX, feature="e2e"):
        yield


def clients(name: str, **kw: Any) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    headers = {"x-simulator-tag": name + SUFFIX}
    return (
        openai.OpenAI(default_headers=headers, **kw),
        anthropic.Anthropic(default_headers=headers, **kw),
    )


def usage_of(obj: Any) -> Any:
    usage = getattr(obj, "usage", None)
    return usage.model_dump(exclude_none=True) if usage is not None else None


def chunk_view(chunk: Any) -> dict[str, Any]:
    return {
        "choices": [
            {"delta": (c.delta.content if c.delta else None), "finish": c.finish_reason}
            for c in chunk.choices
        ],
        "usage": usage_of(chunk),
    }


def openai_sync(name: str) -> dict[str, Any]:
    oa, _ = clients(name)
    plain = oa.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    cached = [
        oa.chat.completions.create(
            model="gpt-4.1",
            messages=[{"role": "system", "content": LONG}, {"role": "user", "content": q}],
        )
        for q in ("first", "second")
    ]
    reasoning = oa.chat.completions.create(
        model="o4-mini",
        messages=MSG,
        reasoning_effort="medium",  # type: ignore[arg-type]
    )
    legacy = oa.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon")
    emb = oa.embeddings.create(model="text-embedding-3-small", input=["one", "two three"])
    return {
        "texts": [plain.choices[0].message.content, reasoning.choices[0].message.content,
                  legacy.choices[0].text],
        "usage": [usage_of(x) for x in (plain, *cached, reasoning, legacy, emb)],
        "embedding_len": len(emb.data[0].embedding),
    }  # fmt: skip


def openai_stream(name: str) -> dict[str, Any]:
    oa, _ = clients(name)
    bare = [chunk_view(c) for c in oa.chat.completions.create(
        model="gpt-4o", messages=MSG, stream=True)]  # type: ignore[arg-type]  # fmt: skip
    asked = [chunk_view(c) for c in oa.chat.completions.create(
        model="o4-mini", messages=MSG, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})]  # fmt: skip
    legacy = [
        {"text": c.choices[0].text if c.choices else None, "usage": usage_of(c)}
        for c in oa.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Stream me", stream=True, max_tokens=30
        )
    ]
    with oa.responses.stream(model="gpt-5-mini", input="Stream a response") as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    return {"bare": bare, "asked": asked, "legacy": legacy, "responses_events": kinds,
            "responses_usage": usage_of(final), "responses_text": final.output_text}  # fmt: skip


async def _openai_async(name: str) -> dict[str, Any]:
    oa = openai.AsyncOpenAI(default_headers={"x-simulator-tag": name + SUFFIX})
    many = await asyncio.gather(
        *(oa.chat.completions.create(model="gpt-4o-mini",
                                     messages=[{"role": "user", "content": f"q{i}"}])
          for i in range(5))
    )  # fmt: skip
    stream = await oa.chat.completions.create(model="gpt-4o", messages=MSG, stream=True)  # type: ignore[arg-type]
    chunks = [chunk_view(c) async for c in stream]
    r = await oa.responses.create(model="o3", input="async responses")
    await oa.close()
    return {"texts": [m.choices[0].message.content for m in many], "chunks": chunks,
            "responses_usage": usage_of(r)}  # fmt: skip


def openai_async(name: str) -> dict[str, Any]:
    return asyncio.run(_openai_async(name))


def anthropic_sync(name: str) -> dict[str, Any]:
    _, an = clients(name)
    system = [
        {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": LONG[:1500] + "5m", "cache_control": {"type": "ephemeral"}},
    ]
    out = []
    for q in ("first", "second"):
        m = an.messages.create(model=HAIKU, max_tokens=300, system=system,  # type: ignore[arg-type]
                               messages=[{"role": "user", "content": q}])  # fmt: skip
        out.append({"text": m.content[0].text, "usage": usage_of(m)})  # type: ignore[union-attr]
    thought = an.messages.create(
        model="claude-sonnet-4-6", max_tokens=3000, messages=MSG,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1500},
    )  # fmt: skip
    out.append({"blocks": [b.type for b in thought.content], "usage": usage_of(thought)})
    return {"calls": out}


def anthropic_stream(name: str) -> dict[str, Any]:
    _, an = clients(name)
    system = [{"type": "text", "text": LONG + "stream", "cache_control": {"type": "ephemeral"}}]
    with an.messages.stream(model=HAIKU, max_tokens=300, system=system,  # type: ignore[arg-type]
                            messages=MSG) as s:  # type: ignore[arg-type]  # fmt: skip
        text = s.get_final_text()
        final = s.get_final_message()
    raw = [e.type for e in an.messages.create(model=HAIKU, max_tokens=100, messages=MSG,  # type: ignore[arg-type]
                                              stream=True)]  # fmt: skip
    return {"text": text, "usage": usage_of(final), "raw_events": raw}


async def _anthropic_async(name: str) -> dict[str, Any]:
    an = anthropic.AsyncAnthropic(default_headers={"x-simulator-tag": name + SUFFIX})
    m = await an.messages.create(model=HAIKU, max_tokens=100, messages=MSG)  # type: ignore[arg-type]
    async with an.messages.stream(model=HAIKU, max_tokens=2500, messages=MSG,  # type: ignore[arg-type]
                                  thinking={"type": "enabled", "budget_tokens": 1024}) as s:  # fmt: skip
        final = await s.get_final_message()
    await an.close()
    return {"usage": [usage_of(m), usage_of(final)]}


def anthropic_async(name: str) -> dict[str, Any]:
    return asyncio.run(_anthropic_async(name))


def retries(name: str) -> dict[str, Any]:
    oa, an = clients(name)
    seen: dict[str, Any] = {}
    r = oa.chat.completions.create(model="gpt-4o", messages=MSG,  # type: ignore[arg-type]
                                   extra_headers={"x-simulator-fail": "429x1", **FAST})  # fmt: skip
    seen["openai_429_then_ok"] = r.choices[0].message.content
    s = oa.chat.completions.create(model="gpt-4o", messages=MSG, stream=True,  # type: ignore[arg-type]
                                   extra_headers={"x-simulator-fail": "500x2", **FAST})  # fmt: skip
    seen["openai_500x2_stream"] = [chunk_view(c) for c in s]
    m = an.messages.create(model=HAIKU, max_tokens=100, messages=MSG,  # type: ignore[arg-type]
                           extra_headers={"x-simulator-fail": "529x1,429x1", **FAST})  # fmt: skip
    seen["anthropic_after_529_429"] = m.content[0].text  # type: ignore[union-attr]
    try:
        oa.with_options(max_retries=1).chat.completions.create(
            model="gpt-4o",
            messages=MSG,
            extra_headers={"x-simulator-fail": "500", **FAST},  # type: ignore[arg-type]
        )
    except openai.InternalServerError as exc:
        seen["openai_500_error"] = [type(exc).__name__, exc.status_code, exc.body]
    try:
        an.with_options(max_retries=0).messages.create(
            model=HAIKU,
            max_tokens=10,
            messages=MSG,
            extra_headers={"x-simulator-fail": "429"},  # type: ignore[arg-type]
        )
    except anthropic.RateLimitError as exc:
        body = {k: v for k, v in dict(exc.body).items() if k != "request_id"}  # type: ignore[call-overload]
        seen["anthropic_429_error"] = [type(exc).__name__, exc.status_code, body]
    return seen


def cut_short(name: str) -> dict[str, Any]:
    """Streams the app abandons, and streams the server drops mid-body."""
    oa, an = clients(name, max_retries=0)
    seen: dict[str, Any] = {}
    slow = {"x-simulator-chunk-delay-ms": "30", "x-simulator-output-tokens": "60"}
    stream = oa.chat.completions.create(model="gpt-4o", messages=MSG, stream=True,  # type: ignore[arg-type]
                                        extra_headers=slow)  # fmt: skip
    seen["openai_abandoned"] = [chunk_view(c) for _, c in zip(range(3), stream, strict=False)]
    stream.close()
    with an.messages.stream(model=HAIKU, max_tokens=200, messages=MSG,  # type: ignore[arg-type]
                            extra_headers=slow) as s:  # fmt: skip
        seen["anthropic_abandoned"] = [e.type for _, e in zip(range(4), s, strict=False)]
    try:
        for _ in oa.chat.completions.create(model="gpt-4o", messages=MSG, stream=True,  # type: ignore[arg-type]
                                            extra_headers={"x-simulator-cut-after": "4"}):  # fmt: skip
            pass
    except Exception as exc:
        seen["openai_dropped"] = type(exc).__name__
    try:
        for _ in an.messages.create(model=HAIKU, max_tokens=200, messages=MSG, stream=True,  # type: ignore[arg-type]
                                    extra_headers={"x-simulator-cut-after": "5"}):  # fmt: skip
            pass
    except Exception as exc:
        seen["anthropic_dropped"] = type(exc).__name__
    time.sleep(0.3)  # let the server notice the abandoned connections
    return seen


def baggage_only(name: str) -> dict[str, Any]:
    oa, an = clients(name)
    r = oa.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    m = an.messages.create(model=HAIKU, max_tokens=50, messages=MSG)  # type: ignore[arg-type]
    return {"usage": [usage_of(r), usage_of(m)]}


def many_calls(name: str) -> dict[str, Any]:
    """For the sampled app: N calls, streamed and not."""
    oa, an = clients(name)
    n = int(os.environ.get("E2E_CALLS", "20"))
    for i in range(n):
        msgs = [{"role": "user", "content": f"call {i}"}]
        if i % 2:
            list(oa.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True))  # type: ignore[arg-type]
        else:
            an.messages.create(model=HAIKU, max_tokens=64, messages=msgs)  # type: ignore[arg-type]
    return {"calls": n}


SCENARIOS: dict[str, Callable[[str], dict[str, Any]]] = {
    "openai_sync": openai_sync,
    "openai_stream": openai_stream,
    "openai_async": openai_async,
    "anthropic_sync": anthropic_sync,
    "anthropic_stream": anthropic_stream,
    "anthropic_async": anthropic_async,
    "retries": retries,
    "cut_short": cut_short,
    "baggage_only": baggage_only,
    "many_calls": many_calls,
}


def main(argv: list[str]) -> int:
    out_path, names = argv[0], argv[1:] or [n for n in SCENARIOS if n != "many_calls"]
    results: dict[str, Any] = {}
    for name in names:
        try:
            with attributed(name):
                results[name] = SCENARIOS[name](name)
        except Exception as exc:  # recorded: the test shows which scenario broke and how
            results[name] = {"unexpected_error": f"{type(exc).__name__}: {exc}"}
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
