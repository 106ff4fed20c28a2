"""Deterministic token counts and generated text.

Contract: the same request (model, prompt, parameters) and seed always give the same
counts and the same text. Counting is a documented heuristic, not a real tokenizer:
input tokens are ``ceil(len(text) / 4)`` over a canonical serialisation of the prompt
(role markers included, so every message costs a few tokens of overhead); generated
text has exactly one word per visible output token. Reasoning ("thinking") tokens are
drawn from a range that grows with the requested effort and always fit the output
budget (``max_tokens`` and friends), like a real model's.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

CHARS_PER_TOKEN = 4

_VOCABULARY = (
    "the meter counts every token once and the ledger keeps exact sums for each "
    "consumer while streams carry usage at the end so nothing is guessed or lost "
    "cached prompts cost less reasoning adds hidden output retries show failures "
    "simulated models answer quickly with plain words that mean little but count well"
)
_WORDS = tuple(_VOCABULARY.split())

_EFFORT_RANGES = {
    "none": (0, 0),
    "minimal": (0, 64),
    "low": (64, 256),
    "medium": (128, 768),
    "high": (512, 2048),
    "xhigh": (1024, 4096),
}


def count_tokens(text: str) -> int:
    """Tokens of ``text``: ``ceil(len(text) / 4)``, 0 for the empty string."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def rng_for(seed: int, *parts: str) -> random.Random:
    """A random generator seeded by ``seed`` and the request's identifying parts."""
    digest = hashlib.sha256("\x1f".join((str(seed), *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def words(rng: random.Random, n: int) -> list[str]:
    """``n`` words (one output token each); the first capitalised, the last ends a sentence."""
    out = [rng.choice(_WORDS) for _ in range(n)]
    if out:
        out[0] = out[0].capitalize()
        out[-1] = out[-1] + "."
    return out


@dataclass(frozen=True)
class Generation:
    """What a simulated model produced for one choice."""

    words: tuple[str, ...]
    """The visible text, one word per output token."""
    reasoning_tokens: int
    """Hidden (or thinking) output tokens, a subset of :attr:`output_tokens`."""
    truncated: bool
    """True when the output budget cut the answer short (finish reason ``length``)."""

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def text_tokens(self) -> int:
        return len(self.words)

    @property
    def output_tokens(self) -> int:
        return self.text_tokens + self.reasoning_tokens

    def deltas(self) -> list[str]:
        """The text as streamed: one word per chunk, spaces kept with the following word."""
        return [w if i == 0 else " " + w for i, w in enumerate(self.words)]


def generate(
    rng: random.Random,
    *,
    min_tokens: int,
    max_tokens: int,
    budget: int | None,
    reasoning: str | None,
    text_tokens: int | None = None,
    reasoning_tokens: int | None = None,
) -> Generation:
    """Plan one choice's output.

    Args:
        rng: the request's deterministic generator.
        min_tokens, max_tokens: range of visible output tokens when not forced.
        budget: the request's output cap (``max_tokens``, ``max_completion_tokens``, …),
            shared by reasoning and visible tokens; None for no cap.
        reasoning: the effort (``"low"``, ``"medium"``, …) for reasoning models, else None.
        text_tokens, reasoning_tokens: forced counts (the ``x-simulator-*`` headers).
    """
    if reasoning_tokens is None:
        low, high = _EFFORT_RANGES.get(reasoning or "none", _EFFORT_RANGES["medium"])
        reasoning_tokens = rng.randint(low, high) if high else 0
    wanted = text_tokens if text_tokens is not None else rng.randint(min_tokens, max_tokens)
    truncated = False
    if budget is not None:
        if reasoning_tokens > budget:
            reasoning_tokens, truncated = budget, True
        if wanted > budget - reasoning_tokens:
            wanted, truncated = budget - reasoning_tokens, True
    return Generation(
        words=tuple(words(rng, wanted)), reasoning_tokens=reasoning_tokens, truncated=truncated
    )
