"""Offline token estimates for calls whose exact usage never arrived.

Used only when a stream is cut short (or a server omits usage); such spans carry
``meterline.usage.estimated=true`` and the store prefers an exact report of the same
response over an estimate.

Heuristic (tiktoken cannot download its BPE files here, so nothing is tokenised):

* **input** — the provider's own count when it sent one (Anthropic ``message_start``,
  Gemini ``usageMetadata``); otherwise ``ceil(request body bytes / 4)``. English text
  averages ~4 characters per token; counting the JSON body instead of the text adds the
  message framing and keys (~10-20 % on typical chat requests), which acts as the
  safety margin: the estimate errs high, never to zero.
* **output** — ``max(text-bearing stream events, ceil(text characters / 3))``. OpenAI-style
  chat streams carry about one token per delta event, so for them only events are counted
  (reading each event's text would cost more than the 5 % per-chunk budget); Anthropic,
  Responses and Gemini events also count their text (escaped bytes, without parsing):
  3 characters per token (instead of ~4) is a 1.33× safety factor that also covers code
  and non-English text better.
"""

from __future__ import annotations

CHARS_PER_INPUT_TOKEN = 4
CHARS_PER_OUTPUT_TOKEN = 3


def input_tokens(request_bytes: int) -> int:
    """Estimated input tokens for a request body of ``request_bytes`` bytes."""
    return -(-request_bytes // CHARS_PER_INPUT_TOKEN)


def output_tokens(text_chars: int, text_events: int) -> int:
    """Estimated output tokens from the streamed text seen so far."""
    return max(text_events, -(-text_chars // CHARS_PER_OUTPUT_TOKEN))
