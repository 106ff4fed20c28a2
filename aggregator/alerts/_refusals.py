"""Rate-limit refusals counted where every replica sees them (``rate_limit.repeated``).

Contract: :meth:`Refusals.count` records one refusal of a rate limit in a UTC hour and
returns how many that limit has had in that hour so far, over every process that shares
the store (or the Redis ledger) — N replicas and a restarted process add up to one count:

- **Redis ledger** (replicas share a Redis): ``INCR`` of one key per limit and hour
  (expires after 2 hours): atomic, so exactly one refusal sees the N-th count.
- **Otherwise** the store: one row per refusal in ``rate_limit_refusals`` (kept 2 days),
  then a count of the limit's rows of the hour. Each refusal sees at least its own and
  every earlier one; two replicas refusing at the same instant may both see N or more,
  and the alert's deterministic id keeps it once.

Once this process has recorded (or found) the hour's alert of a limit it stops counting
that limit until the next hour: a client hammering a rate limit costs at most N small
inserts per limit and hour.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from meterline.store import Store

logger = logging.getLogger(__name__)

REDIS_TTL_S = 2 * 3600

COUNT_SQL = """
SELECT count(DISTINCT Id) FROM {db}.rate_limit_refusals
WHERE LimitKey = {key:String} AND Hour = {hour:DateTime('UTC')}
"""


class Refusals:
    """Shared refusal counts of one store (and its Redis ledger, when there is one)."""

    def __init__(self, store: Store, redis: Any = None, *, prefix: str = "meterline") -> None:
        """Args:
        redis: a ``redis.Redis`` client (the Redis ledger's), or ``None``.
        prefix: the Redis key prefix.
        """
        self.store = store
        self.redis = redis
        self.prefix = prefix
        self._done: set[tuple[str, datetime]] = set()
        self._lock = threading.Lock()

    def count(self, key: str, at: datetime) -> int:
        """Record one refusal of the limit ``key`` at ``at``; its count in ``at``'s hour."""
        hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if self.redis is not None:
            name = f"{self.prefix}:refusals:{key}:{hour.strftime('%Y%m%dT%H')}"
            pipe = self.redis.pipeline()
            pipe.incr(name)
            pipe.expire(name, REDIS_TTL_S)
            value, _ = pipe.execute()
            return int(value)
        self.store.insert_columns(
            "rate_limit_refusals",
            [[key], [hour], [uuid.uuid4().hex], [datetime.now(UTC)]],
            ["LimitKey", "Hour", "Id", "At"],
        )
        _, [(n,)] = self.store.query(COUNT_SQL, {"key": key, "hour": hour})
        return int(n)

    def done(self, key: str, at: datetime) -> bool:
        """Whether this process knows the hour's alert of ``key`` is recorded."""
        hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        with self._lock:
            for old in [k for k in self._done if k[1] < hour]:
                self._done.discard(old)
            return (key, hour) in self._done

    def mark_done(self, key: str, at: datetime) -> None:
        hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        with self._lock:
            self._done.add((key, hour))
