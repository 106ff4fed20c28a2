"""SQL, one module per query, built in one place and tested as strings."""

from typing import Any

READ_SETTINGS: dict[str, Any] = {
    "session_timezone": "UTC",
    # ``llm_usage_counted`` gives the same rows with or without this (``Month`` leads the
    # sorting key, so no key spans two partitions); with it, a range of several months
    # runs FINAL on each month apart instead of merging them.
    "do_not_merge_across_partitions_select_final": 1,
}
"""Settings of the aggregator's reads of ``llm_usage`` (the view gives the same rows
without them, e.g. to Grafana)."""
