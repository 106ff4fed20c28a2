"""Faults on demand: the next N matching requests fail in a chosen way.

Kinds, in the order a request meets them:

``rate_limit``
    429, code ``rate_limit``, before anything runs (nothing applied or saved).
``lock_timeout``
    429, code ``lock_timeout``, with ``Stripe-Should-Retry: true`` (the SDK retries it
    when ``max_network_retries`` is set), before anything runs.
``drop_before``
    the connection is closed with no answer; nothing was applied.
``server_error``
    500 ``api_error`` after the endpoint began but before it applied anything. On v1 the
    answer is saved under the request's idempotency key (Stripe replays saved 500s) and
    carries ``Stripe-Should-Retry: false``; on v2 it is not saved (v2 retries re-execute).
``server_error_after``
    the request was applied, then 500 (saved as above): the client cannot tell it apart.
``drop_after``
    the request was applied and its answer saved under the idempotency key, then the
    connection is closed with no answer.
``stall_before`` / ``stall_after``
    the answer is held back ``delay`` seconds, before or after the request was applied
    (then sent normally): a window in which to kill the client with a real signal while
    its request is in flight, applied or not.

``retry_after`` adds a ``Retry-After`` header (seconds); ``should_retry`` sets
``Stripe-Should-Retry`` explicitly (``None``: the kind's default).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

KINDS = (
    "rate_limit",
    "lock_timeout",
    "drop_before",
    "server_error",
    "server_error_after",
    "drop_after",
    "stall_before",
    "stall_after",
)


@dataclass
class Fault:
    kind: str
    times: int = 1
    path: str | None = None
    """Only requests whose path starts with this (``None``: every API request)."""
    method: str | None = None
    retry_after: int | None = None
    should_retry: bool | None = None
    delay: float = 30.0
    """Seconds a ``stall_*`` fault holds the answer back."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}, allowed: {', '.join(KINDS)}")
        if self.times < 1:
            raise ValueError(f"times must be at least 1, got {self.times!r}")

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or path.startswith(self.path)


class Faults:
    """A queue of pending faults; each request takes at most one (the first that matches)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Fault] = []
        self.fired: list[tuple[str, str, str]] = []
        """(kind, method, path) of every fault that fired, in order."""

    def inject(
        self,
        kind: str,
        *,
        times: int = 1,
        path: str | None = None,
        method: str | None = None,
        retry_after: int | None = None,
        should_retry: bool | None = None,
        delay: float = 30.0,
    ) -> Fault:
        fault = Fault(kind, times, path, method, retry_after, should_retry, delay)
        with self._lock:
            self._pending.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._pending:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self._pending.remove(fault)
                    self.fired.append((fault.kind, method, path))
                    return fault
        return None

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._pending)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
