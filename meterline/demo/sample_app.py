"""A sample LLM app for the demo: real ``openai`` and ``anthropic`` SDK calls, no meterline
code except attribution.

Run it under the zero-code instrumentation against the simulator::

    OPENAI_BASE_URL=http://127.0.0.1:8765/v1 ANTHROPIC_BASE_URL=http://127.0.0.1:8765 \\
    OPENAI_API_KEY=sk-demo ANTHROPIC_API_KEY=sk-demo \\
    meterline instrument -- python -m meterline.demo.sample_app

Three consumers and their features: ``acme`` (``summarize`` on OpenAI chat, plain,
streamed and async; ``chat`` on Anthropic with a cached system prompt), ``globex``
(``research`` on reasoning models through chat and the Responses API; ``search``
with embeddings) and ``initech`` (``support`` on Anthropic with extended thinking and a
1-hour cache, one call that succeeds after a 429 and the SDK's retry, one that fails with
500 even after retries). It talks to a real provider too if pointed at one — it would
spend money there, and the failure headers would be ignored.

Attribution uses :func:`meterline.instrumentation.consumer` when importable, otherwise
OTel baggage (``meterline.consumer.id`` / ``meterline.feature``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai

FAST_RETRY = {"x-simulator-retry-after-ms": "50"}
HOUSE_RULES = (
    "You are the support assistant of a metering company. Answer briefly, cite the "
    "invoice line you used, never invent prices, and escalate billing disputes. "
) * 30  # ~1200 tokens: long enough for prompt caching
HANDBOOK = "\n".join(
    f"Section {i}. {HOUSE_RULES[:400]}" for i in range(1, 201)
)  # ~20k tokens: the long, cached context of the chat, research and support features
REPORT = "\n".join(
    f"2026-11-{1 + i % 30:02d}  consumer-{i % 97:02d}  gpt-4o-mini  {1000 + 37 * i} input  "
    f"{200 + 11 * i} output  {i % 7} failed"
    for i in range(1500)
)  # ~25k tokens: the usage report acme summarises
ANTHROPIC_MODEL = "claude-haiku-4-5"
SUPPORT_MODEL = "claude-sonnet-4-6"
RESEARCH_MODEL = "o4-mini"
UNPRICED_MODEL = "acme-summarizer-v2"
"""acme's own fine-tuned model behind an OpenAI-compatible gateway: no catalogue price."""


def _attribution() -> Callable[[str, str], contextlib.AbstractContextManager[Any]]:
    try:
        from meterline.instrumentation import consumer
    except ImportError:  # meterline's instrumentation not installed: plain OTel baggage
        return _baggage

    def attribute(name: str, feature: str) -> contextlib.AbstractContextManager[Any]:
        return consumer(name, feature=feature)

    return attribute


@contextlib.contextmanager
def _baggage(name: str, feature: str) -> Iterator[None]:
    from opentelemetry import baggage, context

    ctx = baggage.set_baggage("meterline.consumer.id", name)
    ctx = baggage.set_baggage("meterline.feature", feature, context=ctx)
    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)


def _say(text: str) -> None:
    print(text, flush=True)


def acme(oa: openai.OpenAI, an: anthropic.Anthropic, attribute: Callable[..., Any]) -> None:
    with attribute("acme", "summarize"):
        r = oa.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Summarise this usage report:\n{REPORT}"}],
        )
        _say(f"acme/summarize  chat          {r.usage.total_tokens if r.usage else 0} tokens")
        stream = oa.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Summarise it again, streamed:\n{REPORT}"}],
            stream=True,  # no include_usage: the instrumentation still gets exact usage
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        _say(f"acme/summarize  chat stream   {len(text.split())} words")
        asyncio.run(_acme_async())
        r = oa.chat.completions.create(
            model=UNPRICED_MODEL,
            messages=[{"role": "user", "content": "Summarise last week's usage in one line."}],
        )
        _say(f"acme/summarize  {UNPRICED_MODEL}  {r.usage.total_tokens if r.usage else 0} tokens")
    with attribute("acme", "chat"):
        for question in ("How do I read my invoice?", "And the cached tokens line?"):
            with an.messages.stream(
                model=ANTHROPIC_MODEL,
                max_tokens=1024,
                system=[{"type": "text", "text": HANDBOOK, "cache_control": {"type": "ephemeral"}}],
                messages=[{"role": "user", "content": question}],
            ) as s:
                u = s.get_final_message().usage
            _say(
                f"acme/chat       messages      cache write {u.cache_creation_input_tokens}, "
                f"read {u.cache_read_input_tokens}"
            )


async def _acme_async() -> None:
    client = openai.AsyncOpenAI()
    results = await asyncio.gather(
        *(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"Summary #{i}"}]
            )
            for i in range(3)
        )
    )
    await client.close()
    _say(f"acme/summarize  async chat    {len(results)} calls")


def globex(oa: openai.OpenAI, attribute: Callable[..., Any]) -> None:
    with attribute("globex", "research"):
        long_context = [{"role": "system", "content": HANDBOOK}]
        for question in ("Which plan fits 2M tokens a day?", "And 5M?"):
            r = oa.chat.completions.create(
                model=RESEARCH_MODEL,
                reasoning_effort="high",
                messages=[*long_context, {"role": "user", "content": question}],  # type: ignore[list-item]
            )
            details = r.usage.completion_tokens_details if r.usage else None
            cached = r.usage.prompt_tokens_details if r.usage else None
            _say(
                f"globex/research chat o4-mini   reasoning "
                f"{details.reasoning_tokens if details else 0}, "
                f"cached {cached.cached_tokens if cached else 0}"
            )
        with oa.responses.stream(
            model=RESEARCH_MODEL, input="Compare the two plans.", reasoning={"effort": "medium"}
        ) as s:
            final = s.get_final_response()
        _say(f"globex/research responses     {final.usage.output_tokens if final.usage else 0} out")
    with attribute("globex", "search"):
        e = oa.embeddings.create(
            model="text-embedding-3-small", input=["metering", "billing", "tokens"]
        )
        _say(f"globex/search   embeddings    {e.usage.prompt_tokens} tokens")


def initech(an: anthropic.Anthropic, attribute: Callable[..., Any]) -> None:
    with attribute("initech", "support"):
        system = [
            {
                "type": "text",
                "text": HANDBOOK,
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ]
        m = an.messages.create(
            model=SUPPORT_MODEL,
            max_tokens=8000,
            thinking={"type": "enabled", "budget_tokens": 4096},
            system=system,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "My invoice doubled. Why?"}],
        )
        _say(f"initech/support thinking      {m.usage.output_tokens} out (1h cache write)")
        m = an.messages.create(
            model=SUPPORT_MODEL,
            max_tokens=200,
            messages=[{"role": "user", "content": "Retry me."}],
            extra_headers={"x-simulator-fail": "429x1", **FAST_RETRY},
        )
        _say(f"initech/support after 429     {m.usage.output_tokens} out (SDK retried)")
        try:
            an.with_options(max_retries=1).messages.create(
                model=SUPPORT_MODEL,
                max_tokens=200,
                messages=[{"role": "user", "content": "This one fails."}],
                extra_headers={"x-simulator-fail": "500", **FAST_RETRY},
            )
        except anthropic.InternalServerError as exc:
            _say(f"initech/support failed        HTTP {exc.status_code} after 1 retry (expected)")


def main() -> int:
    attribute = _attribution()
    oa = openai.OpenAI()
    an = anthropic.Anthropic()
    acme(oa, an, attribute)
    globex(oa, attribute)
    initech(an, attribute)
    oa.close()
    an.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
