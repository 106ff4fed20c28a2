"""Offline input-token counts of a request body, before it is sent.

Contract (the budget guard and ``POST /v1/estimate`` both call it)::

    tokens, exact = count_input_tokens(provider, model, body, api=None)

``body`` is the JSON request body as the SDK sends it (OpenAI chat / responses /
completions / embeddings, Anthropic messages, Gemini ``generateContent``); ``api`` names
the shape (``None``: inferred from the provider and the body's keys). It returns an
integer >= 1 and whether the count is exact. It never raises: a body it cannot read is
estimated from its JSON length (``_estimate.input_tokens``).

**Exact** (``exact=True``): OpenAI models when ``bpe-openai`` is installed (the extra
``meterline[tokens]``: a 40 MB wheel that embeds OpenAI's ``o200k_base`` and
``cl100k_base`` encodings and needs no network; tiktoken would download them). The text
is encoded with the model's encoding and framed by OpenAI's published counting rule for
chat messages of the models it was published for (gpt-3.5, gpt-4, gpt-4o: 3 tokens
per message, 1 per ``name``, 3 to prime the reply — the cookbook's
``num_tokens_from_messages``, checked against its published examples in
``tests/instrumentation/test_tokens.py``; other chat models get the same framing, their
text exactly encoded, but ``exact=False``); completions and embeddings inputs are the
encoded text alone. Everything else OpenAI sends — tools (the cookbook's reverse-engineered
rule is applied), images, audio, tool calls, the Responses API's item framing — is
counted with the encoder too, but flagged ``exact=False``.

**Calibrated estimate** (no exact tokenizer offline: Anthropic, Gemini, other providers,
or OpenAI without ``bpe-openai``): :func:`estimate_text_tokens` splits the text into
pieces the way BPE pre-tokenizers do (words, digit runs, punctuation, other scripts) and
prices each piece; the sum is multiplied by :data:`SAFETY_FACTOR`. Measured against
``o200k_base`` / ``cl100k_base`` (docs/estimate.md has the table): English prose and docs
+16-19 %, code +26 %, JSON +26 %, CJK +7-53 %, Russian +57-202 %, digits +10 %; it
undercounts random base64 (-13 %). Anthropic gets
:data:`ANTHROPIC_FACTOR` on top: Claude's tokenizer is not available offline, so its
error for Claude is not measured here; the factor only leans toward caution. Images count
:data:`IMAGE_TOKENS` each (the most a provider charges for one image at default detail),
documents by their base64 length.

Known limits: the framing of the Responses API, Anthropic and Gemini is an approximation
(a few tokens per message); Anthropic's tool-use system prompt is counted as
:data:`ANTHROPIC_TOOL_PROMPT` tokens when tools are given (its documented size for
current models, auto tool choice).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Mapping
from typing import Any

from meterline.instrumentation import _estimate

logger = logging.getLogger(__name__)

__all__ = [
    "ANTHROPIC_FACTOR",
    "IMAGE_TOKENS",
    "SAFETY_FACTOR",
    "count_input_tokens",
    "encoding_for_model",
    "estimate_text_tokens",
    "exact_available",
]

SAFETY_FACTOR = 1.1
"""Multiplies the piece-by-piece estimate so that typical text errs high."""
ANTHROPIC_FACTOR = 1.15
"""Extra caution for Claude, whose tokenizer cannot be run offline."""
IMAGE_TOKENS = 1600
"""Tokens counted per image (Anthropic's ~1.15 MP cap is ~1600; OpenAI high detail less)."""
ANTHROPIC_TOOL_PROMPT = 346
"""Tokens of Anthropic's tool-use system prompt (auto / none tool choice)."""

_PER_MESSAGE = 3
_PER_MESSAGE_ESTIMATED = 5
"""Framing per message when it is not published or the text is estimated (leans high)."""
_PER_NAME = 1
_REPLY_PRIMING = 3

# OpenAI model name prefixes → encoding (as tiktoken's model map, extended to current models).
_ENCODING_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("gpt-oss", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("codex-", "o200k_base"),
    ("computer-use", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
)
_OPENAI_PROVIDERS = frozenset({"openai", "azure.ai.openai"})
_PUBLISHED_FRAMING = ("gpt-3.5", "gpt-35", "gpt-4o", "gpt-4-")
"""Chat models whose message framing OpenAI published (the cookbook's families); other
models' text is encoded exactly but their framing (o-series, gpt-4.1, gpt-5) is not
published, so their counts are flagged inexact."""

_lock = threading.Lock()
_encoders: dict[str, Any] = {}
_missing = False


def encoding_for_model(model: str) -> str | None:
    """OpenAI's encoding of ``model`` (``o200k_base``, ``cl100k_base``) or None if unknown."""
    name = model.rsplit("/", 1)[-1].lower()
    for prefix, encoding in _ENCODING_PREFIXES:
        if name.startswith(prefix):
            return encoding
    return None


def _encoder(name: str) -> Any:
    """The ``bpe_openai`` encoding ``name``, loaded once; None when the package is absent."""
    global _missing
    enc = _encoders.get(name)
    if enc is not None or _missing:
        return enc
    with _lock:
        enc = _encoders.get(name)
        if enc is None and not _missing:
            try:
                import bpe_openai  # the extra meterline[tokens]
            except ImportError:
                _missing = True
                logger.debug("bpe-openai is not installed: OpenAI input tokens are estimated")
                return None
            enc = _encoders[name] = bpe_openai.get_encoding(name)
    return enc


def exact_available(provider: str, model: str) -> bool:
    """Whether ``model``'s text can be counted exactly here."""
    if provider not in _OPENAI_PROVIDERS:
        return False
    name = encoding_for_model(model)
    return name is not None and _encoder(name) is not None


_PIECE = re.compile(r"[A-Za-z]+|[0-9]+|\s+|[^\sA-Za-z0-9]")


def estimate_text_tokens(text: str) -> int:
    """Calibrated token estimate of ``text`` (see the module docstring), safety included."""
    n = 0.0
    after_space = False
    for m in _PIECE.finditer(text):
        s = m.group()
        ch = s[0]
        if ch.isascii() and ch.isalpha():
            size = len(s)
            plain = s.islower() or s[1:].islower() or (s.isupper() and size <= 4)
            n += max(1.0, size / 5.5) if plain and size <= 12 else size / 2.2
        elif ch.isdigit():
            n += math.ceil(len(s) / 3) + (1 if after_space else 0)
        elif ch.isspace():
            n += 0 if len(s) == 1 else 1
        elif ch.isascii():
            n += 0.8
        else:
            code = ord(ch)
            n += 3 if code >= 0x1F000 else 1.0 if code >= 0x2E80 else 0.6
        after_space = s == " "
    return math.ceil(n * SAFETY_FACTOR)


class _Counter:
    """Adds up one request's tokens: text through the encoder (or the estimate)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.tokens = 0
        self.exact = encoder is not None

    def text(self, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
            self.exact = False
        if not value:
            return
        if self.encoder is not None:
            self.tokens += len(self.encoder.encode_ordinary(value))
        else:
            self.tokens += estimate_text_tokens(value)

    def json(self, value: Any) -> None:
        """Structured input (tool schemas, tool calls): counted as JSON, never exact."""
        self.exact = False
        self.text(json.dumps(value, ensure_ascii=False, separators=(",", ":")))

    def image(self) -> None:
        self.exact = False
        self.tokens += IMAGE_TOKENS

    def blob(self, data: Any) -> None:
        """A document or audio part: estimated from its base64 length (3 bytes per 4)."""
        self.exact = False
        size = len(data) if isinstance(data, str) else 0
        self.tokens += max(IMAGE_TOKENS, size // 4)

    def extra(self, n: int) -> None:
        self.tokens += n

    def message(self) -> None:
        """One message's framing: OpenAI's published 3 tokens when exact, else more."""
        self.tokens += _PER_MESSAGE if self.exact else _PER_MESSAGE_ESTIMATED


_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})
_BLOB_TYPES = frozenset({"document", "file", "input_file", "input_audio", "audio"})


def _part(c: _Counter, part: Any) -> None:
    """One content part / block of any of the shapes."""
    if isinstance(part, str):
        c.text(part)
        return
    if not isinstance(part, Mapping):
        c.json(part)
        return
    kind = part.get("type")
    if kind in _IMAGE_TYPES or "inlineData" in part or "fileData" in part:
        if "inlineData" in part and not str(part["inlineData"].get("mimeType", "")).startswith(
            "image"
        ):
            c.blob(part["inlineData"].get("data"))
        else:
            c.image()
    elif kind in _BLOB_TYPES:
        source = part.get("source") or part.get(kind) or part
        data = source.get("data") if isinstance(source, Mapping) else None
        c.blob(data if data is not None else part.get("file_data"))
    elif isinstance(part.get("text"), str):
        c.text(part["text"])
    elif kind in ("thinking", "redacted_thinking"):
        c.text(part.get("thinking") or part.get("data"))
    elif kind == "tool_use":
        c.text(part.get("name"))
        c.json(part.get("input"))
    elif kind == "tool_result":
        c.exact = False
        _content(c, part.get("content"))
    elif kind in ("function_call", "function_call_output"):
        c.exact = False
        c.text(part.get("name"))
        c.text(part.get("arguments") if "arguments" in part else part.get("output"))
    elif "functionCall" in part or "functionResponse" in part:
        c.json(part)
    else:
        c.json({k: v for k, v in part.items() if k != "cache_control"})


def _content(c: _Counter, content: Any) -> None:
    if isinstance(content, str) or content is None:
        c.text(content)
    elif isinstance(content, list):
        if len(content) != 1:
            c.exact = False  # how parts are joined is not published
        for part in content:
            _part(c, part)
    else:
        c.json(content)


def _openai_tools(c: _Counter, tools: Any) -> None:
    """OpenAI's cookbook rule for function tools (``num_tokens_for_tools``), not exact."""
    c.exact = False
    o200k = c.encoder is not None and getattr(c.encoder, "name", "") == "o200k_base"
    func_init = 7 if o200k or c.encoder is None else 10
    counted = False
    for tool in tools if isinstance(tools, list) else [tools]:
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping):
            fn = tool if isinstance(tool, Mapping) and "name" in tool else None
        if fn is None:
            c.json(tool)
            continue
        counted = True
        c.extra(func_init)
        desc = str(fn.get("description") or "").removesuffix(".")
        c.text(f"{fn.get('name', '')}:{desc}")
        params = fn.get("parameters")
        props = params.get("properties") if isinstance(params, Mapping) else None
        if isinstance(props, Mapping) and props:
            c.extra(3)
            for key, prop in props.items():
                c.extra(3)
                prop = prop if isinstance(prop, Mapping) else {}
                if isinstance(prop.get("enum"), list):
                    c.extra(-3)
                    for item in prop["enum"]:
                        c.extra(3)
                        c.text(str(item))
                pdesc = str(prop.get("description") or "").removesuffix(".")
                c.text(f"{key}:{prop.get('type', '')}:{pdesc}")
                rest = {k: v for k, v in prop.items() if k not in ("type", "description", "enum")}
                if rest:
                    c.json(rest)
    if counted:
        c.extra(12)


def _published_framing(model: str) -> bool:
    name = model.rsplit("/", 1)[-1].lower()
    return name == "gpt-4" or name.startswith(_PUBLISHED_FRAMING)


def _openai_chat(c: _Counter, body: Mapping[str, Any], model: str = "") -> None:
    if not _published_framing(model):
        c.exact = False
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        c.message()
        if not isinstance(message, Mapping):
            c.json(message)
            continue
        for key, value in message.items():
            if key == "content":
                _content(c, value)
            elif key == "tool_calls" or key == "function_call":
                c.json(value)
            elif isinstance(value, str):
                c.text(value)
                if key == "name":
                    c.extra(_PER_NAME)
                elif key != "role":
                    c.exact = False  # tool_call_id, refusal …: framing not published
            elif value is not None:
                c.json(value)
    c.extra(_REPLY_PRIMING)
    for key in ("tools", "functions"):
        if body.get(key):
            _openai_tools(c, body[key])
    if isinstance(body.get("response_format"), Mapping) and "json_schema" in body.get(
        "response_format", {}
    ):
        c.json(body["response_format"])


def _openai_responses(c: _Counter, body: Mapping[str, Any]) -> None:
    c.exact = False  # the Responses API's framing is not published
    if body.get("instructions"):
        c.message()
        c.text(body.get("instructions"))
    items = body.get("input")
    if isinstance(items, str):
        c.message()
        c.text(items)
    elif isinstance(items, list):
        for item in items:
            c.message()
            if isinstance(item, Mapping) and "content" in item:
                c.text(item.get("role"))
                _content(c, item.get("content"))
            else:
                _part(c, item)
    c.extra(_REPLY_PRIMING)
    if body.get("tools"):
        _openai_tools(c, body["tools"])


def _prompt_like(c: _Counter, value: Any) -> None:
    """Completions ``prompt`` / embeddings ``input``: text, texts, or token ids."""
    if isinstance(value, str):
        c.text(value)
    elif isinstance(value, list) and value and all(type(v) is int for v in value):
        c.extra(len(value))  # already tokens
    elif isinstance(value, list):
        for item in value:
            _prompt_like(c, item)
    elif value is not None:
        c.json(value)


def _openai_completions(c: _Counter, body: Mapping[str, Any]) -> None:
    _prompt_like(c, body.get("prompt"))
    if body.get("suffix"):
        c.text(body["suffix"])


def _anthropic_messages(c: _Counter, body: Mapping[str, Any]) -> None:
    system = body.get("system")
    if system is not None:
        c.message()
        _content(c, system)
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        c.message()
        if isinstance(message, Mapping):
            _content(c, message.get("content"))
        else:
            c.json(message)
    c.extra(_REPLY_PRIMING)
    tools = body.get("tools")
    if tools:
        c.extra(ANTHROPIC_TOOL_PROMPT)
        for tool in tools if isinstance(tools, list) else [tools]:
            c.json({k: v for k, v in tool.items() if k != "cache_control"}
                   if isinstance(tool, Mapping) else tool)  # fmt: skip


def _gemini(c: _Counter, body: Mapping[str, Any]) -> None:
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, Mapping):
        c.message()
        _content(c, system.get("parts"))
    contents = body.get("contents")
    if isinstance(contents, str):
        contents = [{"parts": [{"text": contents}]}]
    for item in contents if isinstance(contents, list) else []:
        c.message()
        if isinstance(item, Mapping):
            _content(c, item.get("parts"))
        else:
            _part(c, item)
    if body.get("tools"):
        c.json(body["tools"])


_APIS = {
    "chat": _openai_chat,
    "responses": _openai_responses,
    "completions": _openai_completions,
    "embeddings": lambda c, body: _prompt_like(c, body.get("input")),
    "messages": _anthropic_messages,
    "gemini": _gemini,
}


def _infer_api(provider: str, body: Mapping[str, Any]) -> str:
    if "contents" in body:
        return "gemini"
    if "messages" in body:
        return "messages" if provider == "anthropic" else "chat"
    if "prompt" in body:
        return "completions"
    if "input" in body:
        return "responses"
    return "chat"


def count_input_tokens(
    provider: str, model: str, body: Mapping[str, Any], *, api: str | None = None
) -> tuple[int, bool]:
    """Input tokens of a request ``body`` and whether the count is exact (never raises).

    Args:
        provider: ``gen_ai.provider.name`` (``openai``, ``anthropic``, ``gcp.gemini`` …).
        model: the requested model.
        body: the JSON body as the SDK sends it.
        api: ``chat``, ``responses``, ``completions``, ``embeddings``, ``messages`` or
            ``gemini``; ``None`` infers it from ``provider`` and the body's keys.
    """
    try:
        if not isinstance(body, Mapping):
            raise TypeError("body is not a JSON object")
        shape = api if api in _APIS else _infer_api(provider, body)
        name = encoding_for_model(model) if provider in _OPENAI_PROVIDERS else None
        encoder = _encoder(name) if name is not None else None
        counter = _Counter(encoder)
        if shape == "chat":
            _openai_chat(counter, body, model)
        else:
            _APIS[shape](counter, body)
        tokens = counter.tokens
        if encoder is None and provider == "anthropic":
            tokens = math.ceil(tokens * ANTHROPIC_FACTOR)
        return max(1, tokens), counter.exact and encoder is not None
    except Exception:  # a body of an unexpected shape: never fail the caller
        logger.debug("could not count the request's tokens; estimating", exc_info=True)
        try:
            size = len(json.dumps(body, ensure_ascii=False, default=str).encode())
        except Exception:
            size = 0
        return max(1, _estimate.input_tokens(size)), False
