"""Prompt caching, simulated the way the providers describe it.

* OpenAI (automatic): prompts of at least ``min_tokens`` (1024) tokens are cached in
  128-token steps; a later prompt with the same prefix reads the longest cached step
  (``prompt_tokens_details.cached_tokens``). Entries live 10 minutes after last use.
* Anthropic (explicit): each ``cache_control`` breakpoint whose prefix has at least
  ``min_tokens`` tokens is a cache point. The longest prefix already cached is read
  (``cache_read_input_tokens``); every later breakpoint's segment is written
  (``cache_creation_input_tokens``, split by the breakpoint's ``ttl`` into 5-minute and
  1-hour writes); the rest is plain input. Entries expire after their TTL, renewed on use.

Keys are hashes of the canonical prompt prefix and the model; the store is in memory,
bounded (least recently used entries go first) and safe to use from several threads.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meterline.simulator._tokens import CHARS_PER_TOKEN

OPENAI_STEP = 128
OPENAI_TTL_S = 600.0
ANTHROPIC_TTLS = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True)
class Breakpoint:
    """A ``cache_control`` marker: the prompt's canonical text up to ``offset`` is cacheable."""

    offset: int
    ttl: str = "5m"


@dataclass(frozen=True)
class CacheResult:
    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def write(self) -> int:
        return self.write_5m + self.write_1h


class PromptCache:
    """The simulator's prompt cache (see the module docstring for the rules)."""

    def __init__(
        self,
        *,
        min_tokens: int = 1024,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_tokens = min_tokens
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, float] = OrderedDict()  # key -> expiry
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _hit(self, key: bytes, now: float, ttl: float) -> bool:
        expiry = self._entries.get(key)
        if expiry is None or expiry < now:
            return False
        self._entries[key] = now + ttl
        self._entries.move_to_end(key)
        return True

    def _put(self, key: bytes, now: float, ttl: float) -> None:
        self._entries[key] = max(self._entries.get(key, 0.0), now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def openai(self, model: str, text: str) -> CacheResult:
        """Cached tokens of an OpenAI prompt, and cache its 128-token steps."""
        if math.ceil(len(text) / CHARS_PER_TOKEN) < self.min_tokens:
            return CacheResult()
        step_chars = OPENAI_STEP * CHARS_PER_TOKEN
        first = math.ceil(self.min_tokens / OPENAI_STEP)
        hasher = hashlib.sha256(f"openai\x1f{model}\x1f".encode())
        keys: list[tuple[int, bytes]] = []
        pos = 0
        for step in range(1, len(text) // step_chars + 1):
            hasher.update(text[pos : step * step_chars].encode())
            pos = step * step_chars
            if step >= first:
                keys.append((step * OPENAI_STEP, hasher.copy().digest()))
        now = self._clock()
        with self._lock:
            read = 0
            for tokens, key in reversed(keys):
                if self._hit(key, now, OPENAI_TTL_S):
                    read = tokens
                    break
            for _, key in keys:
                self._put(key, now, OPENAI_TTL_S)
        return CacheResult(read=read)

    def anthropic(self, model: str, text: str, breakpoints: Sequence[Breakpoint]) -> CacheResult:
        """Cache reads and writes of an Anthropic prompt with ``cache_control`` breakpoints."""
        points: list[tuple[int, str, bytes]] = []
        hasher = hashlib.sha256(f"anthropic\x1f{model}\x1f".encode())
        pos = 0
        for bp in sorted(breakpoints, key=lambda b: b.offset):
            hasher.update(text[pos : bp.offset].encode())
            pos = bp.offset
            tokens = math.ceil(bp.offset / CHARS_PER_TOKEN)
            if tokens >= self.min_tokens and (not points or tokens > points[-1][0]):
                ttl = bp.ttl if bp.ttl in ANTHROPIC_TTLS else "5m"
                points.append((tokens, ttl, hasher.copy().digest()))
        if not points:
            return CacheResult()
        now = self._clock()
        with self._lock:
            hit = -1
            for i in range(len(points) - 1, -1, -1):
                tokens, ttl, key = points[i]
                if self._hit(key, now, ANTHROPIC_TTLS[ttl]):
                    hit = i
                    break
            read = points[hit][0] if hit >= 0 else 0
            writes = {"5m": 0, "1h": 0}
            previous = read
            for tokens, ttl, key in points[hit + 1 :]:
                writes[ttl] += tokens - previous
                previous = tokens
                self._put(key, now, ANTHROPIC_TTLS[ttl])
        return CacheResult(read=read, write_5m=writes["5m"], write_1h=writes["1h"])
