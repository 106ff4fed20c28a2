"""The simulator's configuration and shared state (ledger, prompt cache, attempt counts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from meterline.simulator._cache import PromptCache
from meterline.simulator._failures import AttemptCounter
from meterline.simulator._http import Call
from meterline.simulator._tokens import Generation, generate, rng_for
from meterline.simulator.ledger import Ledger


@dataclass(frozen=True)
class SimulatorConfig:
    """Settings of one simulator app; every field has a working default."""

    seed: int = 0
    """Mixed into every deterministic choice: another seed, other counts and texts."""
    min_output_tokens: int = 8
    """Fewest visible output tokens per choice (unless the budget is smaller)."""
    max_output_tokens: int = 48
    """Most visible output tokens per choice when the request does not force a count."""
    cache_min_tokens: int = 1024
    """Shortest cacheable prompt prefix, in tokens (OpenAI, Anthropic and Gemini alike)."""
    retry_after_ms: int = 1000
    """The delay 429 responses ask for (``retry-after`` / ``retry-after-ms``)."""
    chunk_delay_ms: int = 0
    """Pause between streamed events (``x-simulator-chunk-delay-ms`` overrides)."""
    api_key: str | None = None
    """When set, requests must present it (Bearer, ``x-api-key``, ``x-goog-api-key``)."""
    max_ledger_entries: int = 100_000

    def __post_init__(self) -> None:
        if not 0 <= self.min_output_tokens <= self.max_output_tokens:
            raise ValueError(
                f"need 0 <= min_output_tokens <= max_output_tokens, got "
                f"{self.min_output_tokens!r} and {self.max_output_tokens!r}"
            )
        for name in ("cache_min_tokens", "retry_after_ms", "chunk_delay_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")


@dataclass
class Simulator:
    """State shared by every request of one app."""

    config: SimulatorConfig
    ledger: Ledger = field(init=False)
    cache: PromptCache = field(init=False)
    attempts: AttemptCounter = field(default_factory=AttemptCounter)

    def __post_init__(self) -> None:
        self.ledger = Ledger(max_entries=self.config.max_ledger_entries)
        self.cache = PromptCache(min_tokens=self.config.cache_min_tokens)

    def generate(
        self,
        call: Call,
        *,
        key: tuple[str, ...],
        budget: int | None,
        reasoning: str | None,
        reasoning_tokens: int | None = None,
    ) -> Generation:
        """One choice's output, deterministic in ``key`` and the seed.

        The ``x-simulator-output-tokens`` and ``x-simulator-reasoning-tokens`` headers
        force the visible and the reasoning counts (still capped by ``budget``).
        """
        forced_reasoning = call.header_int("x-simulator-reasoning-tokens")
        if forced_reasoning is not None and reasoning is None:
            reasoning = "forced"
        if forced_reasoning is None:
            forced_reasoning = reasoning_tokens
        return generate(
            rng_for(self.config.seed, *key),
            min_tokens=self.config.min_output_tokens,
            max_tokens=self.config.max_output_tokens,
            budget=budget,
            reasoning=reasoning,
            text_tokens=call.header_int("x-simulator-output-tokens"),
            reasoning_tokens=forced_reasoning if reasoning is not None else 0,
        )
