"""Rewriting a request so that it fits (the ``degrade`` policy and checkpoint answers).

Per API shape, the output cap is the field the request already uses, else the shape's
current one: OpenAI chat ``max_completion_tokens`` (or ``max_tokens`` when the request
uses it), legacy completions and Anthropic ``max_tokens``, Responses
``max_output_tokens``, Gemini ``generationConfig.maxOutputTokens``. The model is the
body's ``model`` (Gemini names it in the URL path: switching a Gemini model is not
supported, its cap is).
"""

from __future__ import annotations

import json
from typing import Any

_CAP_FIELDS: dict[str, tuple[str, ...]] = {
    # shape class name → candidate fields, the default last
    "ChatCompletions": ("max_tokens", "max_completion_tokens"),
    "Completions": ("max_tokens",),
    "Responses": ("max_output_tokens",),
    "Messages": ("max_tokens",),
}


def can_switch_model(shape: Any) -> bool:
    return type(shape).__name__ in _CAP_FIELDS


def rewrite(
    shape: Any, body: dict[str, Any], *, max_tokens: int | None = None, model: str | None = None
) -> dict[str, Any]:
    """A copy of ``body`` with its output cap and/or model replaced."""
    out = dict(body)
    kind = type(shape).__name__
    if model is not None and kind in _CAP_FIELDS:
        out["model"] = model
    if max_tokens is not None:
        if kind == "GenerateContent":
            config = out.get("generationConfig")
            config = dict(config) if isinstance(config, dict) else {}
            config["maxOutputTokens"] = max_tokens
            out["generationConfig"] = config
        else:
            fields = _CAP_FIELDS.get(kind, ("max_tokens",))
            present = [f for f in fields if f in out]
            for f in present or fields[-1:]:
                out[f] = max_tokens
    return out


def encode(body: dict[str, Any]) -> bytes:
    """The body as the SDKs send it (compact JSON, UTF-8)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
