"""A ClickHouse-compatible HTTP endpoint over the embedded store (for Grafana and tests).

See :mod:`meterline.clickhouse_http.app` for what of ClickHouse's HTTP interface it
speaks, its read-only rules and its known limits.
"""

from meterline.clickhouse_http._errors import ClickHouseError
from meterline.clickhouse_http.app import create_app

__all__ = ["ClickHouseError", "create_app"]
