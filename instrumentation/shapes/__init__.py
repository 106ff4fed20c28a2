"""API shapes: which LLM API a request speaks, recognised by method and path on any host.

``route(path)`` is called for every POST the app sends, so it is a handful of string
checks. Recognised (by path suffix, so self-hosted and OpenAI-compatible servers work):

* ``…/chat/completions`` → OpenAI chat; ``…/completions`` → legacy completions;
  ``…/embeddings``; ``…/responses`` (Responses API) — including Azure OpenAI's
  ``/openai/deployments/{deployment}/…`` paths, whose deployment stands in for the model;
* ``…/v1/messages`` → Anthropic Messages;
* ``…/models/{model}:generateContent`` / ``:streamGenerateContent`` → Gemini (and Vertex).

Known limits: Bedrock's and Vertex's Anthropic routes (``/model/{id}/invoke``,
``:rawPredict``) and the OpenAI Assistants/Realtime APIs are not metered.
"""

from __future__ import annotations

from meterline.instrumentation.shapes._base import RequestFacts, Shape
from meterline.instrumentation.shapes.anthropic_messages import MESSAGES
from meterline.instrumentation.shapes.gemini import GENERATE, STREAM_GENERATE
from meterline.instrumentation.shapes.openai_chat import CHAT, COMPLETIONS
from meterline.instrumentation.shapes.openai_embeddings import EMBEDDINGS
from meterline.instrumentation.shapes.openai_responses import RESPONSES

__all__ = ["RequestFacts", "Shape", "route"]

_SUFFIXES: tuple[tuple[str, Shape], ...] = (
    ("/chat/completions", CHAT),
    ("/completions", COMPLETIONS),
    ("/responses", RESPONSES),
    ("/embeddings", EMBEDDINGS),
    ("/v1/messages", MESSAGES),
)


def route(path: str) -> tuple[Shape, str | None] | None:
    """The shape of a POST to ``path`` and the model named in the path, or None."""
    for suffix, shape in _SUFFIXES:
        if path.endswith(suffix):
            return shape, _azure_deployment(path)
    colon = path.rfind(":")
    if colon > 0:
        verb = path[colon + 1 :]
        if verb == "generateContent" or verb == "streamGenerateContent":
            slash = path.rfind("/models/", 0, colon)
            model = path[slash + 8 : colon] if slash >= 0 else None
            return (GENERATE if verb == "generateContent" else STREAM_GENERATE), model
    return None


def _azure_deployment(path: str) -> str | None:
    marker = path.find("/deployments/")
    if marker < 0:
        return None
    rest = path[marker + 13 :]
    return rest.split("/", 1)[0] or None
