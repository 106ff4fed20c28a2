"""OpenAI-shaped endpoints: chat completions, Responses, embeddings, legacy completions.

Shapes follow the public API: ``chatcmpl-…`` / ``resp_…`` / ``cmpl-…`` ids, dated
model snapshots in ``model`` for well-known aliases, ``usage`` with
``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``.
Chat and completion streams send ``data: {chunk}`` lines and ``data: [DONE]``; a
final chunk with ``choices: []`` and the usage is sent only when the request sets
``stream_options.include_usage``, and then every earlier chunk has ``"usage": null``,
exactly as OpenAI does. Responses streams send typed events ending with
``response.completed`` (or ``response.incomplete``) carrying the usage.

Reasoning models (``o1``/``o3``/``o4``…, ``gpt-5``…) spend hidden reasoning tokens that
count in the output (effort from ``reasoning_effort`` / ``reasoning.effort``). Prompts of
1024+ tokens are cached automatically (see ``_cache``).

Not covered: tool calls and function outputs, structured outputs / JSON mode, logprobs,
audio and images in output, stop sequences, ``previous_response_id`` conversation state,
background responses, the Assistants/Batch/Files APIs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import time
from collections.abc import Callable
from typing import Any

from starlette.responses import Response

from meterline.simulator._http import BadRequest, Call, Event, dumps, random_id
from meterline.simulator._state import Simulator
from meterline.simulator._tokens import Generation, count_tokens, rng_for

SNAPSHOTS = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "o1": "o1-2024-12-17",
    "o3": "o3-2025-04-16",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    "gpt-3.5-turbo-instruct": "gpt-3.5-turbo-instruct",
}
_REASONING = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5(?!-chat))")
_IMAGE_TOKENS = 85


def response_model(model: str) -> str:
    return SNAPSHOTS.get(model, model)


def is_reasoning_model(model: str) -> bool:
    return bool(_REASONING.match(model))


def _fingerprint(model: str) -> str:
    return "fp_" + hashlib.sha256(model.encode()).hexdigest()[:10]


def _require(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if value is None:
        raise BadRequest(f"Missing required parameter: '{name}'.")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"Invalid type for '{name}'.")
    return value


def _content_text(content: Any) -> str:
    """Canonical text of a message's content (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                parts.append(str(part))
            elif isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif part.get("type") in ("image_url", "input_image"):
                url = json.dumps(part.get("image_url") or part.get("file_id"), sort_keys=True)
                parts.append(("<image " + url)[: _IMAGE_TOKENS * 4].ljust(_IMAGE_TOKENS * 4, "."))
            else:
                parts.append(dumps(part))
        return "".join(parts)
    return dumps(content)


def chat_prompt(messages: list[Any], tools: Any = None) -> str:
    """The canonical prompt text of a chat request; its token count is the prompt's."""
    out = [f"<|tools|>{json.dumps(tools, sort_keys=True)}" if tools else ""]
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("Invalid type for 'messages': each message must be an object.")
        role = str(message.get("role", "user"))
        name = f" name={message['name']}" if message.get("name") else ""
        extra = ""
        if message.get("tool_calls"):
            extra = json.dumps(message["tool_calls"], sort_keys=True)
        out.append(f"<|{role}{name}|>{_content_text(message.get('content'))}{extra}<|end|>")
    return "".join(out) + "<|assistant|>"


def _effort(model: str, value: Any) -> str | None:
    if not is_reasoning_model(model):
        return None
    return value if isinstance(value, str) else "medium"


def _budget(body: dict[str, Any], *names: str, default: int | None = None) -> int | None:
    for name in names:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadRequest(f"Invalid '{name}': expected an integer of at least 1.")
            return value
    return default


def _chat_usage(prompt_tokens: int, cached: int, gens: list[Generation]) -> dict[str, Any]:
    completion = sum(g.output_tokens for g in gens)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": sum(g.reasoning_tokens for g in gens),
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _normalised(usage: dict[str, Any]) -> dict[str, int]:
    return {
        "input_tokens": usage["prompt_tokens"],
        "output_tokens": usage["completion_tokens"],
        "cache_read_input_tokens": usage["prompt_tokens_details"]["cached_tokens"],
        "reasoning_output_tokens": usage["completion_tokens_details"]["reasoning_tokens"],
    }


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _stream_chunks(
    base: dict[str, Any],
    choices: list[tuple[Generation, dict[str, Any], Callable[[str | None], dict[str, Any]]]],
    usage: dict[str, Any],
    include_usage: bool,
) -> list[Event]:
    """Chunks of a chat or text completion stream: (generation, first delta, delta shape)."""
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    events = []
    for index, (_, first, _) in enumerate(choices):
        if first:
            choice = {"index": index, "delta": first, "logprobs": None, "finish_reason": None}
            events.append(Event(dumps({**base, "choices": [choice], **extra})))
    for index, (gen, _, shape) in enumerate(choices):
        for piece in gen.deltas():
            choice = {"index": index, **shape(piece), "logprobs": None, "finish_reason": None}
            events.append(Event(dumps({**base, "choices": [choice], **extra})))
        finish = "length" if gen.truncated else "stop"
        choice = {"index": index, **shape(None), "logprobs": None, "finish_reason": finish}
        events.append(Event(dumps({**base, "choices": [choice], **extra})))
    if include_usage:
        events.append(Event(dumps({**base, "choices": [], "usage": usage}), usage=True))
    events.append(Event("[DONE]"))
    return events


async def chat_completions(sim: Simulator, call: Call, provider: str = "openai") -> Response:
    body = call.body
    model = _require(body, "model", str)
    messages = _require(body, "messages", list)
    if not messages:
        raise BadRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1."
        )
    n = _budget(body, "n", default=1) or 1
    prompt = chat_prompt(messages, body.get("tools"))
    effort = _effort(model, body.get("reasoning_effort"))
    budget = _budget(body, "max_completion_tokens", "max_tokens")
    gens = [
        sim.generate(
            call, key=("chat", model, prompt, str(i), str(body.get("seed"))), budget=budget,
            reasoning=effort,
        )
        for i in range(n)
    ]  # fmt: skip
    cached = sim.cache.openai(model, prompt).read
    usage = _chat_usage(count_tokens(prompt), cached, gens)
    rid = random_id("chatcmpl-", 29)
    shown = response_model(model)
    entry = call.entry(
        id=rid, provider=provider, api="chat.completions", operation="chat",
        request_model=model, response_model=shown, stream=bool(body.get("stream")),
        usage=usage, **_normalised(usage),
    )  # fmt: skip
    created = int(time.time())
    base = {
        "id": rid, "object": "chat.completion.chunk", "created": created, "model": shown,
        "service_tier": "default", "system_fingerprint": _fingerprint(model),
    }  # fmt: skip
    if body.get("stream"):
        include = _include_usage(body)
        entry.usage = usage if include else None
        first = {"role": "assistant", "content": "", "refusal": None}

        def shape(piece: str | None) -> dict[str, Any]:
            return {"delta": {"content": piece} if piece is not None else {}}

        events = _stream_chunks(base, [(g, first, shape) for g in gens], usage, include)
        return call.stream(events, entry, sim.config.chunk_delay_ms)
    choices = [
        {
            "index": i,
            "message": {
                "role": "assistant", "content": g.text, "refusal": None, "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "length" if g.truncated else "stop",
        }
        for i, g in enumerate(gens)
    ]  # fmt: skip
    payload = {**base, "object": "chat.completion", "choices": choices, "usage": usage}
    return call.json(payload, entry)


async def completions(sim: Simulator, call: Call, provider: str = "openai") -> Response:
    """Legacy ``/v1/completions``; ``max_tokens`` defaults to 16 as in the real API."""
    body = call.body
    model = _require(body, "model", str)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = "".join(p if isinstance(p, str) else " " * 4 * len(p) for p in prompt)
    if not isinstance(prompt, str):
        raise BadRequest("Missing required parameter: 'prompt'.")
    n = _budget(body, "n", default=1) or 1
    budget = _budget(body, "max_tokens", default=16)
    gens = [
        sim.generate(call, key=("completion", model, prompt, str(i)), budget=budget, reasoning=None)
        for i in range(n)
    ]
    cached = sim.cache.openai(model, prompt).read
    usage = _chat_usage(max(1, count_tokens(prompt)), cached, gens)
    rid = random_id("cmpl-", 29)
    shown = response_model(model)
    entry = call.entry(
        id=rid, provider=provider, api="completions", operation="text_completion",
        request_model=model, response_model=shown, stream=bool(body.get("stream")),
        usage=usage, **_normalised(usage),
    )  # fmt: skip
    base = {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": shown,
        "system_fingerprint": _fingerprint(model),
    }  # fmt: skip
    if body.get("stream"):
        include = _include_usage(body)
        entry.usage = usage if include else None

        def shape(piece: str | None) -> dict[str, Any]:
            return {"text": piece or ""}

        events = _stream_chunks(base, [(g, {}, shape) for g in gens], usage, include)
        return call.stream(events, entry, sim.config.chunk_delay_ms)
    choices = [
        {
            "text": g.text, "index": i, "logprobs": None,
            "finish_reason": "length" if g.truncated else "stop",
        }
        for i, g in enumerate(gens)
    ]  # fmt: skip
    return call.json({**base, "choices": choices, "usage": usage}, entry)


def _embedding_inputs(value: Any) -> list[tuple[str, int]]:
    """(canonical text, tokens) of each input of an embeddings request."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRequest("'input' must be a non-empty string or array.")
    if all(isinstance(v, int) for v in value):
        value = [value]
    out = []
    for item in value:
        if isinstance(item, str):
            if not item:
                raise BadRequest("'$.input' is invalid: empty strings are not allowed.")
            out.append((item, count_tokens(item)))
        elif isinstance(item, list) and item and all(isinstance(t, int) for t in item):
            out.append((dumps(item), len(item)))
        else:
            raise BadRequest("'$.input' is invalid.")
    return out


async def embeddings(sim: Simulator, call: Call, provider: str = "openai") -> Response:
    """Deterministic unit vectors; ``encoding_format: base64`` (the SDK's default) too."""
    body = call.body
    model = _require(body, "model", str)
    inputs = _embedding_inputs(body.get("input"))
    dims = _budget(body, "dimensions", default=3072 if "large" in model else 1536) or 1536
    data = []
    for index, (text, _) in enumerate(inputs):
        rng = rng_for(sim.config.seed, "embedding", model, text)
        vec = [rng.gauss(0.0, 1.0) for _ in range(dims)]
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        floats = [v / norm for v in vec]
        if body.get("encoding_format") == "base64":
            embedding: Any = base64.b64encode(struct.pack(f"<{dims}f", *floats)).decode()
        else:
            embedding = floats
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(t for _, t in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    entry = call.entry(
        id=random_id("emb-", 24), provider=provider, api="embeddings", operation="embeddings",
        request_model=model, response_model=model, usage=usage, input_tokens=tokens,
    )  # fmt: skip
    return call.json({"object": "list", "data": data, "model": model, "usage": usage}, entry)


def _responses_prompt(body: dict[str, Any]) -> str:
    items = body.get("input")
    out = []
    if body.get("tools"):
        out.append(f"<|tools|>{json.dumps(body['tools'], sort_keys=True)}")
    if isinstance(body.get("instructions"), str):
        out.append(f"<|developer|>{body['instructions']}<|end|>")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise BadRequest("Missing required parameter: 'input'.")
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest("Invalid 'input': each item must be an object.")
        if "role" in item:
            out.append(f"<|{item['role']}|>{_content_text(item.get('content'))}<|end|>")
        else:
            out.append(dumps(item))
    return "".join(out) + "<|assistant|>"


def _responses_usage(prompt_tokens: int, cached: int, gen: Generation) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": gen.output_tokens,
        "output_tokens_details": {"reasoning_tokens": gen.reasoning_tokens},
        "total_tokens": prompt_tokens + gen.output_tokens,
    }


async def responses(sim: Simulator, call: Call, provider: str = "openai") -> Response:
    body = call.body
    model = _require(body, "model", str)
    prompt = _responses_prompt(body)
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    effort = _effort(model, reasoning.get("effort"))
    budget = _budget(body, "max_output_tokens")
    gen = sim.generate(call, key=("responses", model, prompt), budget=budget, reasoning=effort)
    cached = sim.cache.openai(model, prompt).read
    usage = _responses_usage(count_tokens(prompt), cached, gen)
    rid = "resp_" + random_id("", 48, "0123456789abcdef")
    shown = response_model(model)
    entry = call.entry(
        id=rid, provider=provider, api="responses", operation="chat",
        request_model=model, response_model=shown, stream=bool(body.get("stream")), usage=usage,
        input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
        cache_read_input_tokens=cached, reasoning_output_tokens=gen.reasoning_tokens,
    )  # fmt: skip
    msg_id = "msg_" + random_id("", 48, "0123456789abcdef")
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": gen.text}
    message = {
        "id": msg_id, "type": "message", "status": "incomplete" if gen.truncated else "completed",
        "content": [part] if gen.words or not gen.truncated else [], "role": "assistant",
    }  # fmt: skip
    output: list[dict[str, Any]] = []
    if effort is not None:
        output.append({"id": "rs_" + random_id("", 48, "0123456789abcdef"), "type": "reasoning",
                       "summary": []})  # fmt: skip
    output.append(message)
    final = {
        "id": rid, "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if gen.truncated else "completed", "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if gen.truncated else None,
        "instructions": body.get("instructions"), "max_output_tokens": budget, "model": shown,
        "output": output, "parallel_tool_calls": True, "previous_response_id": None,
        "reasoning": {"effort": effort, "summary": None}, "service_tier": "default",
        "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
        "top_p": body.get("top_p", 1.0), "truncation": "disabled", "usage": usage,
        "user": None, "metadata": body.get("metadata") or {},
    }  # fmt: skip
    if not body.get("stream"):
        return call.json(final, entry)
    return call.stream(_responses_events(final, gen, msg_id), entry, sim.config.chunk_delay_ms)


def _responses_events(final: dict[str, Any], gen: Generation, msg_id: str) -> list[Event]:
    events: list[Event] = []

    def emit(kind: str, usage: bool = False, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(events), **fields}
        events.append(Event(dumps(payload), name=kind, usage=usage))

    pending = {
        **final, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None,
    }  # fmt: skip
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    message_index = len(final["output"]) - 1
    for index, item in enumerate(final["output"][:message_index]):
        emit("response.output_item.added", output_index=index, item=item)
        emit("response.output_item.done", output_index=index, item=item)
    where = {"item_id": msg_id, "output_index": message_index}
    emit(
        "response.output_item.added", output_index=message_index,
        item={"id": msg_id, "type": "message", "status": "in_progress", "content": [],
              "role": "assistant"},
    )  # fmt: skip
    empty = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    emit("response.content_part.added", **where, content_index=0, part=empty)
    for piece in gen.deltas():
        emit("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[])
    emit("response.output_text.done", **where, content_index=0, text=gen.text, logprobs=[])
    emit("response.content_part.done", **where, content_index=0, part={**empty, "text": gen.text})
    emit("response.output_item.done", output_index=message_index,
         item=final["output"][message_index])  # fmt: skip
    done = "response.incomplete" if gen.truncated else "response.completed"
    emit(done, usage=True, response=final)
    return events


def models_list() -> dict[str, Any]:
    names = sorted({*SNAPSHOTS, "text-embedding-3-small", "text-embedding-3-large"})
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "simulator"} for m in names
        ],
    }
