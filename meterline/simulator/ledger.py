"""The simulator's ledger: the exact usage it returned for every response.

One :class:`LedgerEntry` per request that reached an API route, failed attempts
included (``status`` ≠ 200, zero tokens). Token fields are normalised the way
meterline stores them (docs/attributes.md): ``input_tokens`` includes cache reads and
writes, ``output_tokens`` includes reasoning, so a test compares the ledger's
:meth:`Ledger.totals` with a ``GET /v1/usage`` row key by key. ``usage`` keeps the
provider-shaped object as the provider reported it (or would have, for a stream that
did not ask for usage).

A streamed entry is recorded when the response starts and updated as it is written:
``usage_sent`` turns true when the event carrying usage was written to the connection,
``completed`` when the stream ended normally. "Written" is not "read": a client that
stops reading early may leave written events unread in socket buffers.

Thread-safe; in memory only; bounded to ``max_entries`` (oldest dropped).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

TOTAL_KEYS = (
    "requests",
    "failed_requests",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "reasoning_output_tokens",
)


@dataclass
class LedgerEntry:
    """Usage of one simulated response (or one failed attempt)."""

    id: str
    """The response id sent to the client (a simulator id when the API has none)."""
    provider: str
    """``openai``, ``anthropic`` or ``gcp.gemini`` (``gen_ai.provider.name`` values)."""
    api: str
    """``chat.completions``, ``completions``, ``responses``, ``embeddings``, ``messages``,
    ``count_tokens`` or ``generate_content``."""
    operation: str
    """The ``gen_ai.operation.name`` a meter would record."""
    request_model: str
    response_model: str
    stream: bool = False
    status: int = 200
    error_type: str | None = None
    attempt: int = 0
    """The client's retry count (``x-stainless-retry-count``), else the simulator's count."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    reasoning_output_tokens: int = 0
    usage: dict[str, Any] | None = None
    usage_sent: bool = False
    completed: bool = False
    events_sent: int = 0
    tag: str | None = None
    """The request's ``x-simulator-tag`` header, for tests that group calls."""
    baggage: dict[str, str] = field(default_factory=dict)
    """The request's W3C ``baggage`` header, parsed."""
    traceparent: str | None = None
    time: float = field(default_factory=time.time)
    seq: int = 0
    """Position in the ledger, from 1."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def totals(entries: list[LedgerEntry]) -> dict[str, int]:
    """Sums over ``entries`` with the keys of a ``/v1/usage`` row (``TOTAL_KEYS``).

    ``count_tokens`` calls are not LLM responses and are left out.
    """
    out = dict.fromkeys(TOTAL_KEYS, 0)
    for e in entries:
        if e.api == "count_tokens":
            continue
        out["requests"] += 1
        if not e.ok:
            out["failed_requests"] += 1
            continue
        for key in TOTAL_KEYS[2:]:
            out[key] += getattr(e, key)
    return out


class Ledger:
    """In-memory, thread-safe list of :class:`LedgerEntry`."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._entries: deque[LedgerEntry] = deque(maxlen=max_entries)
        self._lock = threading.Lock()
        self._seq = 0

    def record(self, entry: LedgerEntry) -> LedgerEntry:
        with self._lock:
            self._seq += 1
            entry.seq = self._seq
            self._entries.append(entry)
        return entry

    def update(self, entry: LedgerEntry, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(entry, key, value)

    def entries(
        self,
        *,
        provider: str | None = None,
        tag: str | None = None,
        since: int = 0,
    ) -> list[LedgerEntry]:
        """Copies of the entries after ``since`` (a ``seq``), optionally filtered."""
        with self._lock:
            picked = [
                LedgerEntry(**asdict(e))
                for e in self._entries
                if e.seq > since
                and (provider is None or e.provider == provider)
                and (tag is None or e.tag == tag)
            ]
        return picked

    def totals(self, **filters: Any) -> dict[str, int]:
        """:func:`totals` over :meth:`entries` with the same filters."""
        return totals(self.entries(**filters))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
