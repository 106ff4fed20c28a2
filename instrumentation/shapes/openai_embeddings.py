"""OpenAI embeddings (``POST …/embeddings``): input tokens only.

Embedding responses can be megabytes of vectors; above 1 MiB only the tail of the body is
read, where the API puts ``model`` and ``usage`` after ``data``.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from meterline.instrumentation.shapes._base import RequestFacts, Shape
from meterline.instrumentation.shapes.openai_chat import read_usage

if TYPE_CHECKING:
    from meterline.instrumentation._call import Call

_TAIL = 4096
_USAGE_RE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')
_MODEL_RE = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')


class Embeddings(Shape):
    operation = "embeddings"
    provider = "openai"

    def request(
        self, body: dict[str, Any] | None, raw: bytes, path_model: str | None
    ) -> RequestFacts:
        facts = super().request(body, raw, path_model)
        return facts._replace(stream=False, max_tokens=None)

    def on_json(self, call: Call, data: Any) -> None:
        if not isinstance(data, dict):
            return
        model = data.get("model")
        if isinstance(model, str) and model:
            call.response_model = model
        usage = data.get("usage")
        if isinstance(usage, dict):
            read_usage(call, usage)
            call.output = 0

    def on_large_json(self, call: Call, body: bytes) -> None:
        tail = body[-_TAIL:]
        m = _MODEL_RE.search(tail)
        if m:
            call.response_model = m.group(1).decode("utf-8", "replace")
        m = _USAGE_RE.search(tail)
        if m:
            try:
                usage = json.loads(m.group(1))
            except ValueError:
                return
            if isinstance(usage, dict):
                read_usage(call, usage)
                call.output = 0


EMBEDDINGS = Embeddings()
