"""The package's public surface."""

import meterline.clickhouse_http as clickhouse_http


def test_all_is_pinned() -> None:
    assert clickhouse_http.__all__ == ["ClickHouseError", "create_app"]
