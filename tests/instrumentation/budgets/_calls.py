"""One LLM call through a real SDK (openai or anthropic; sync or async; streamed or not)
against the simulator, returning the usage the provider reported (normalised: input
includes cache reads and writes)."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import openai

from meterline.simulator import SimulatorServer

MESSAGES = [{"role": "user", "content": "Say something about foxes and their dens."}]
MODELS = {"openai": "gpt-4o", "anthropic": "claude-sonnet-4"}
VARIANTS = [
    (sdk, mode, stream)
    for sdk in ("openai", "anthropic")
    for mode in ("sync", "async")
    for stream in (False, True)
]
IDS = [f"{s}-{m}-{'stream' if st else 'plain'}" for s, m, st in VARIANTS]


def call(
    sim: SimulatorServer,
    sdk: str,
    mode: str,
    stream: bool,
    *,
    max_tokens: int = 60,
    model: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, int]:
    """Make the call; returns (input, output) as the provider reported them."""
    model = model or MODELS[sdk]
    kw: dict[str, Any] = {"max_retries": 2, "default_headers": headers or {}}
    if sdk == "openai":
        if mode == "sync":
            return _openai(openai.OpenAI(base_url=sim.openai_base_url, api_key="sk", **kw),
                           model, max_tokens, stream)  # fmt: skip
        client = openai.AsyncOpenAI(base_url=sim.openai_base_url, api_key="sk", **kw)
        return asyncio.run(_openai_async(client, model, max_tokens, stream))
    if mode == "sync":
        return _anthropic(anthropic.Anthropic(base_url=sim.url, api_key="sk", **kw),
                          model, max_tokens, stream)  # fmt: skip
    client = anthropic.AsyncAnthropic(base_url=sim.url, api_key="sk", **kw)
    return asyncio.run(_anthropic_async(client, model, max_tokens, stream))


def _openai(client: openai.OpenAI, model: str, max_tokens: int, stream: bool) -> tuple[int, int]:
    if not stream:
        out = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=max_tokens)
        return out.usage.prompt_tokens, out.usage.completion_tokens
    chunks = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [c.usage for c in chunks if c.usage is not None][-1]
    return usage.prompt_tokens, usage.completion_tokens


async def _openai_async(
    client: openai.AsyncOpenAI, model: str, max_tokens: int, stream: bool
) -> tuple[int, int]:
    async with client:
        if not stream:
            out = await client.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=max_tokens
            )
            return out.usage.prompt_tokens, out.usage.completion_tokens
        chunks = await client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        usage = [c.usage async for c in chunks if c.usage is not None][-1]
        return usage.prompt_tokens, usage.completion_tokens


def _anthropic_usage(usage: Any) -> tuple[int, int]:
    total = usage.input_tokens + (usage.cache_read_input_tokens or 0)
    total += usage.cache_creation_input_tokens or 0
    return total, usage.output_tokens


def _anthropic(
    client: anthropic.Anthropic, model: str, max_tokens: int, stream: bool
) -> tuple[int, int]:
    if not stream:
        out = client.messages.create(model=model, messages=MESSAGES, max_tokens=max_tokens)
        return _anthropic_usage(out.usage)
    with client.messages.stream(model=model, messages=MESSAGES, max_tokens=max_tokens) as s:
        final = s.get_final_message()
    return _anthropic_usage(final.usage)


async def _anthropic_async(
    client: anthropic.AsyncAnthropic, model: str, max_tokens: int, stream: bool
) -> tuple[int, int]:
    async with client:
        if not stream:
            out = await client.messages.create(
                model=model, messages=MESSAGES, max_tokens=max_tokens
            )
            return _anthropic_usage(out.usage)
        async with client.messages.stream(
            model=model, messages=MESSAGES, max_tokens=max_tokens
        ) as s:
            final = await s.get_final_message()
        return _anthropic_usage(final.usage)
