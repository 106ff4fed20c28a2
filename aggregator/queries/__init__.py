"""SQL, one module per query, built in one place and tested as strings."""

from typing import Any

READ_SETTINGS: dict[str, Any] = {
    "session_timezone": "UTC",
    # ``llm_usage`` is partitioned by month and merges (hence deduplication) never cross
    # partitions; without this ClickHouse cannot prune partitions under FINAL and reads
    # every month. Known limit: two reports of one response whose timestamps fall in
    # different months are both counted (each in its month).
    "do_not_merge_across_partitions_select_final": 1,
}
"""Settings of every read of ``llm_usage``, so usage, invoices and exports agree."""
