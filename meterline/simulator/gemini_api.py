"""Gemini-shaped endpoints: ``POST /v1beta/models/{model}:generateContent`` and
``:streamGenerateContent`` (``?alt=sse`` for server-sent events, else a JSON array).

``usageMetadata``: ``promptTokenCount`` (includes ``cachedContentTokenCount``, implicit
caching of 1024+ token prefixes), ``candidatesTokenCount`` (visible output only),
``thoughtsTokenCount`` for thinking models (``gemini-2.5*``, ``gemini-3*``, unless
``thinkingConfig.thinkingBudget`` is 0) and ``totalTokenCount``. Streams send one chunk
per word; only the last chunk carries ``usageMetadata`` and the ``finishReason``.

Not covered: function calling, explicit ``cachedContents``, multimodal output,
safety ratings, ``countTokens``.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import Response

from meterline.simulator._http import BadRequest, Call, Event, dumps, random_id
from meterline.simulator._state import Simulator
from meterline.simulator._tokens import count_tokens

_THINKING = re.compile(r"^gemini-(?:2\.5|3)")


def _prompt(body: dict[str, Any]) -> str:
    out = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, dict):
        out.append("<|system|>" + "".join(str(p.get("text", "")) for p in system.get("parts", [])))
    contents = body.get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    for content in contents:
        parts = content.get("parts", []) if isinstance(content, dict) else []
        role = content.get("role", "user") if isinstance(content, dict) else "user"
        text = "".join(str(p.get("text", dumps(p))) for p in parts if isinstance(p, dict))
        out.append(f"<|{role}|>{text}")
    return "".join(out) + "<|model|>"


async def generate_content(sim: Simulator, call: Call, model: str, stream: bool) -> Response:
    body = call.body
    prompt = _prompt(body)
    config = body.get("generationConfig") or body.get("generation_config") or {}
    budget = config.get("maxOutputTokens") if isinstance(config, dict) else None
    thinking_cfg = config.get("thinkingConfig") if isinstance(config, dict) else None
    thinks = bool(_THINKING.match(model))
    if isinstance(thinking_cfg, dict) and thinking_cfg.get("thinkingBudget") == 0:
        thinks = False
    gen = sim.generate(
        call, key=("gemini", model, prompt), budget=budget, reasoning="low" if thinks else None
    )
    prompt_tokens = max(1, count_tokens(prompt))
    cached = sim.cache.openai(f"gemini/{model}", prompt).read
    usage: dict[str, Any] = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": gen.text_tokens,
        "totalTokenCount": prompt_tokens + gen.output_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
    if gen.reasoning_tokens:
        usage["thoughtsTokenCount"] = gen.reasoning_tokens
    rid = random_id("", 22)
    entry = call.entry(
        id=rid, provider="gcp.gemini", api="generate_content", operation="generate_content",
        request_model=model, response_model=model, stream=stream, usage=usage,
        input_tokens=prompt_tokens, output_tokens=gen.output_tokens,
        cache_read_input_tokens=cached, reasoning_output_tokens=gen.reasoning_tokens,
    )  # fmt: skip
    finish = "MAX_TOKENS" if gen.truncated else "STOP"

    def chunk(text: str, last: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        }
        out: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": rid}
        if last:
            candidate["finishReason"] = finish
            out["usageMetadata"] = usage
        return out

    if not stream:
        return call.json(chunk(gen.text, True), entry)
    pieces = gen.deltas() or [""]
    chunks = [chunk(p, i == len(pieces) - 1) for i, p in enumerate(pieces)]
    if call.request.query_params.get("alt") == "sse":
        events = [Event(dumps(c), usage=i == len(chunks) - 1) for i, c in enumerate(chunks)]
        return call.stream(events, entry, sim.config.chunk_delay_ms)
    return call.json(chunks, entry)
