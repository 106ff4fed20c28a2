"""The collector's own health, sampled into the store (migration 14; issue 12 §2's
pipeline health dashboard): ``ingest_stats``, one row per sample and process.

``Written``, ``Rejected`` and ``Refused`` are the spans of the sample's interval (deltas),
``Pending`` / ``PendingBytes`` the writer's queue at the sample, ``LagMs`` the largest
delay in the interval from the newest span of a write to that write. Rows older than 90
days are dropped (TTL). What it misses: requests refused whole before the writer (a body
that is not OTLP: 400; back-pressure: 503) — the sender retries or logs those.
"""

from __future__ import annotations

INGEST_STATS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.ingest_stats (
    At DateTime64(3, 'UTC'),
    Process String,
    IntervalSeconds Float64,
    Written UInt64,
    Rejected UInt64,
    Refused UInt64,
    Pending UInt64,
    PendingBytes UInt64,
    LagMs UInt64
) ENGINE = MergeTree
PARTITION BY toYYYYMM(At, 'UTC')
ORDER BY At
TTL toDateTime(At) + INTERVAL 90 DAY
"""

INGEST_STATS_COLUMNS: tuple[str, ...] = (
    "At",
    "Process",
    "IntervalSeconds",
    "Written",
    "Rejected",
    "Refused",
    "Pending",
    "PendingBytes",
    "LagMs",
)
