"""A bound on the bytes of OTLP bodies being read, decompressed and decoded at once.

Each body is bounded on its own (20 MiB over HTTP, after gunzip too; 4 MiB over gRPC,
after decompression, by grpc itself), but not their number: 40 concurrent gzip bodies
of 19 MiB took the server from 0.4 to 2.7 GB. The receivers share one
:class:`BodyBudget`: a request takes bytes from it as they arrive (HTTP: each chunk
read and each chunk decompressed; gRPC: the message) and gives them back once the
writer has taken the request (whose own bound, ``max_pending_bytes``, then counts it).
A request that would exceed the budget is answered at once with 503 / UNAVAILABLE and
``Retry-After``, which OTLP exporters retry; nothing waits, so slow senders hold only
what they sent.
"""

from __future__ import annotations

import threading
from types import TracebackType

__all__ = ["DEFAULT_BODY_BUDGET", "BodyBudget", "OverBudget", "Reservation"]

DEFAULT_BODY_BUDGET = 64 * 1024 * 1024
"""Bytes of bodies in flight before the writer took them (three 20 MiB bodies)."""


class OverBudget(Exception):
    """Too many bytes of bodies in flight; retry after :attr:`retry_after` seconds."""

    retry_after = 1

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the collector is reading {limit} bytes of requests already; retry shortly"
        )


class BodyBudget:
    """A byte budget shared by the receivers (thread-safe)."""

    def __init__(self, limit: int = DEFAULT_BODY_BUDGET) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def reservation(self) -> Reservation:
        """A request's share, given back when the ``with`` block ends."""
        return Reservation(self)

    def _take(self, n: int) -> None:
        with self._lock:
            if self.used and self.used + n > self.limit:
                raise OverBudget(self.limit)
            self.used += n

    def _give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Reservation:
    """The bytes one request holds (see :class:`BodyBudget`)."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held = 0

    def add(self, n: int) -> None:
        """Hold ``n`` more bytes.

        Raises:
            OverBudget: they would exceed the budget (a lone request always fits).
        """
        self._budget._take(n)
        self.held += n

    def release(self) -> None:
        """Give back everything held (idempotent)."""
        held, self.held = self.held, 0
        if held:
            self._budget._give(held)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
