"""The stand-in's clock: real time plus a settable offset, so tests can travel in time.

Every rule that depends on time (timestamp window, identifier de-duplication, adjustment
window, idempotency-key pruning, session expiry) reads this clock, never ``time.time()``.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


class Clock:
    """Seconds since the epoch as the stand-in sees them; thread-safe."""

    def __init__(self, now: float | None = None) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0 if now is None else now - time.time()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def set(self, now: float | datetime) -> None:
        """Jump to ``now`` (epoch seconds or an aware datetime); the clock keeps ticking."""
        epoch = now.timestamp() if isinstance(now, datetime) else float(now)
        with self._lock:
            self._offset = epoch - time.time()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def iso(self, epoch: float | None = None) -> str:
        """RFC 3339 with milliseconds and ``Z``, as API v2 renders timestamps."""
        moment = datetime.fromtimestamp(self.now() if epoch is None else epoch, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
