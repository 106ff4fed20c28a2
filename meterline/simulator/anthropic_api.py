"""Anthropic-shaped endpoints: ``POST /v1/messages`` (plain and streamed) and
``POST /v1/messages/count_tokens``.

Usage follows the Messages API: ``input_tokens`` EXCLUDES cache reads and writes,
which are reported in ``cache_read_input_tokens`` and ``cache_creation_input_tokens``
(split by TTL in ``cache_creation.ephemeral_5m_input_tokens`` /
``ephemeral_1h_input_tokens``); caching happens only at ``cache_control`` breakpoints
(on tools, system blocks, message content blocks, or top level) whose prefix has at
least ``cache_min_tokens`` tokens. Extended thinking (``thinking.type`` ``enabled`` with
``budget_tokens``, or ``adaptive``) adds thinking tokens to ``output_tokens`` and
reports them in ``output_tokens_details.thinking_tokens``; the thinking text returned is
a short summary, as with Claude 4 models.

Streams send ``message_start`` (input and cache counts, ``output_tokens`` 1),
``content_block_start`` / ``ping`` / ``content_block_delta`` / ``content_block_stop``,
``message_delta`` with the final ``output_tokens`` only, and ``message_stop``.

Not covered: tool use output, citations, server tools, batches, the Files API, stop
sequences, the 20-block cache lookback (only exact breakpoint prefixes hit).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response

from meterline.simulator._cache import Breakpoint
from meterline.simulator._http import BadRequest, Call, Event, dumps, random_id
from meterline.simulator._state import Simulator
from meterline.simulator._tokens import Generation, count_tokens, rng_for

SNAPSHOTS = {
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-opus-4-5": "claude-opus-4-5-20251101",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
    "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
}
_IMAGE_TOKENS = 1600
_SUMMARY_WORDS = 24


class _Prompt:
    """Canonical prompt text with the offsets of its cache breakpoints."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.breakpoints: list[Breakpoint] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def mark(self, block: Any) -> None:
        control = block.get("cache_control") if isinstance(block, dict) else None
        if isinstance(control, dict):
            ttl = control.get("ttl", "5m")
            if ttl not in ("5m", "1h"):
                raise BadRequest(f"cache_control.ttl: Input should be '5m' or '1h', got {ttl!r}")
            self.breakpoints.append(Breakpoint(self.length, ttl))

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        raise BadRequest("messages: content blocks must be objects")
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "image":
        src = json.dumps(block.get("source"), sort_keys=True)
        return ("<image " + src)[: _IMAGE_TOKENS * 4].ljust(_IMAGE_TOKENS * 4, ".")
    if kind == "thinking":
        return str(block.get("thinking", ""))
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return "".join(_block_text(b) for b in content)
        return str(content or "")
    clean = {k: v for k, v in block.items() if k != "cache_control"}
    return json.dumps(clean, sort_keys=True)


def build_prompt(body: dict[str, Any]) -> _Prompt:
    """The canonical prompt of a Messages request: tools, then system, then messages."""
    prompt = _Prompt()
    for tool in body.get("tools") or []:
        clean = {k: v for k, v in tool.items() if k != "cache_control"}
        prompt.add(f"<|tool|>{json.dumps(clean, sort_keys=True)}")
        prompt.mark(tool)
    system = body.get("system")
    if isinstance(system, str):
        prompt.add(f"<|system|>{system}")
    elif isinstance(system, list):
        prompt.add("<|system|>")
        for block in system:
            prompt.add(_block_text(block))
            prompt.mark(block)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Field required" if messages is None else "messages: empty")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise BadRequest("messages: each message needs a role of 'user' or 'assistant'")
        prompt.add(f"<|{message['role']}|>")
        content = message.get("content")
        if isinstance(content, str):
            prompt.add(content)
        elif isinstance(content, list):
            for block in content:
                prompt.add(_block_text(block))
                prompt.mark(block)
        else:
            raise BadRequest("messages: content must be a string or a list of blocks")
    prompt.mark(body)  # top-level cache_control: automatic caching of the whole prompt
    prompt.add("<|assistant|>")
    return prompt


def _thinking(body: dict[str, Any], max_tokens: int) -> str | None:
    """The reasoning effort the request's ``thinking`` parameter asks for, or None."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") == "disabled":
        return None
    if thinking.get("type") == "adaptive":
        return "low"
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024 or budget >= max_tokens:
        raise BadRequest(
            "thinking.budget_tokens: must be at least 1024 and less than max_tokens, "
            f"got {budget!r}"
        )
    return "low"


def _usage(
    plain: int, read: int, w5: int, w1: int, output: int, thinking: int | None
) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": plain,
        "cache_creation_input_tokens": w5 + w1,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
        "output_tokens": output,
        "service_tier": "standard",
    }
    if thinking is not None:
        usage["output_tokens_details"] = {"thinking_tokens": thinking}
    return usage


def _content(gen: Generation, thinking: bool, summary: list[str]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if thinking:
        blocks.append(
            {"type": "thinking", "thinking": " ".join(summary), "signature": "sim" + "A" * 40}
        )
    blocks.append({"type": "text", "text": gen.text})
    return blocks


async def messages(sim: Simulator, call: Call) -> Response:
    body = call.body
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens: Field required")
    prompt = build_prompt(body)
    text = prompt.text
    effort = _thinking(body, max_tokens)
    rng_key = ("messages", model, text)
    gen = sim.generate(
        call,
        key=rng_key,
        budget=max_tokens,
        reasoning=effort,
    )
    thinking = effort is not None
    summary_rng = rng_for(sim.config.seed, "summary", *rng_key)
    summary = [summary_rng.choice(gen.words or ("hmm",)) for _ in range(_SUMMARY_WORDS)]
    cache = sim.cache.anthropic(model, text, prompt.breakpoints)
    total = max(1, count_tokens(text))
    plain = total - cache.read - cache.write
    usage = _usage(
        plain, cache.read, cache.write_5m, cache.write_1h, gen.output_tokens,
        gen.reasoning_tokens if thinking else None,
    )  # fmt: skip
    rid = random_id("msg_01", 22)
    shown = SNAPSHOTS.get(model, model)
    entry = call.entry(
        id=rid, provider="anthropic", api="messages", operation="chat", request_model=model,
        response_model=shown, stream=bool(body.get("stream")), usage=usage,
        input_tokens=total, output_tokens=gen.output_tokens,
        cache_read_input_tokens=cache.read, cache_creation_input_tokens=cache.write,
        cache_creation_1h_input_tokens=cache.write_1h,
        reasoning_output_tokens=gen.reasoning_tokens if thinking else 0,
    )  # fmt: skip
    stop = "max_tokens" if gen.truncated else "end_turn"
    content = _content(gen, thinking, summary)
    message = {
        "id": rid, "type": "message", "role": "assistant", "model": shown, "content": content,
        "stop_reason": stop, "stop_sequence": None, "usage": usage,
    }  # fmt: skip
    if not body.get("stream"):
        return call.json(message, entry)
    events: list[Event] = []

    def emit(kind: str, usage_: bool = False, **fields: Any) -> None:
        events.append(Event(dumps({"type": kind, **fields}), name=kind, usage=usage_))

    start_usage = {**usage, "output_tokens": 1}
    start_usage.pop("output_tokens_details", None)
    emit("message_start", message={**message, "content": [], "stop_reason": None,
                                   "usage": start_usage})  # fmt: skip
    for index, block in enumerate(content):
        if block["type"] == "thinking":
            emit("content_block_start", index=index,
                 content_block={"type": "thinking", "thinking": "", "signature": ""})  # fmt: skip
            for i, word in enumerate(summary):
                piece = word if i == 0 else " " + word
                emit("content_block_delta", index=index,
                     delta={"type": "thinking_delta", "thinking": piece})  # fmt: skip
            emit("content_block_delta", index=index,
                 delta={"type": "signature_delta", "signature": block["signature"]})  # fmt: skip
        else:
            emit("content_block_start", index=index, content_block={"type": "text", "text": ""})
            if index == 0 or (index == 1 and thinking):
                emit("ping")
            for piece in gen.deltas():
                emit("content_block_delta", index=index,
                     delta={"type": "text_delta", "text": piece})  # fmt: skip
        emit("content_block_stop", index=index)
    final_usage: dict[str, Any] = {"output_tokens": gen.output_tokens}
    if thinking:
        final_usage["output_tokens_details"] = {"thinking_tokens": gen.reasoning_tokens}
    emit("message_delta", usage_=True, delta={"stop_reason": stop, "stop_sequence": None},
         usage=final_usage)  # fmt: skip
    emit("message_stop")
    return call.stream(events, entry, sim.config.chunk_delay_ms)


async def count_tokens_endpoint(sim: Simulator, call: Call) -> Response:
    """``/v1/messages/count_tokens``: the prompt's input tokens; not recorded in the ledger."""
    del sim
    body = call.body
    if not isinstance(body.get("model"), str):
        raise BadRequest("model: Field required")
    tokens = max(1, count_tokens(build_prompt(body).text))
    return JSONResponse({"input_tokens": tokens}, headers=call.response_headers())
