"""Grafana dashboards with money on them, emitted by the aggregator (issue 12 §2–§3).

- :func:`build_dashboards` — the overview, consumer detail, data quality and pipeline
  health dashboards for one deployment (its database, datasource uid, currency);
  ``dashboards/*.json`` in the repository are these with the defaults (a test keeps
  them equal);
- :func:`datasource_body` — the ``grafana-clickhouse-datasource`` data source Grafana's
  HTTP API takes, pointing at meterline's ClickHouse-HTTP endpoint or a ClickHouse server;
- :func:`push` — install the data source and the dashboards in a running Grafana
  (``meterline grafana push``), idempotent.

Panels read only ``rated_usage_current`` for money and ``llm_usage_counted`` for counts:
the invoices' and ``/v1/usage``'s numbers (docs/rated-usage.md, docs/counting.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from meterline.aggregator.grafana import _consumer, _overview, _pipeline, _quality
from meterline.aggregator.grafana._datasource import DEFAULT_UID, datasource_body
from meterline.aggregator.grafana._panels import PLUGIN, money_unit
from meterline.aggregator.grafana._push import FOLDER_UID, GrafanaError, PushResult, push

if TYPE_CHECKING:
    from meterline.aggregator.budgets import Budget

_BUILDERS = (_overview, _consumer, _quality, _pipeline)
DASHBOARD_UIDS: tuple[str, ...] = tuple(b.UID for b in _BUILDERS)
"""The dashboards' uids, in the order they are listed."""


def build_dashboards(
    *,
    datasource_uid: str | None = DEFAULT_UID,
    database: str = "meterline",
    currency: str = "USD",
    minor_units: int = 2,
    budgets: Sequence[Budget] = (),
) -> list[dict[str, Any]]:
    """Every dashboard for one deployment.

    Args:
        datasource_uid: the datasource variable's default (``None``: Grafana's default
            data source of the plugin's type).
        database: the database of meterline's tables (the ``database`` constant).
        currency: the pricing currency (ISO 4217): the money panels' unit.
        minor_units: the currency's decimals, to which invoice lines are rounded.
        budgets: the configuration file's budgets (the consumer dashboard's Budgets
            panel reads the ``budgets`` table, which holds only the API's).
    """
    money = money_unit(currency)
    return [
        b.build(
            datasource_uid=datasource_uid,
            database=database,
            money=money,
            minor_units=minor_units,
            **({"budgets": budgets} if b is _consumer else {}),
        )
        for b in _BUILDERS
    ]


__all__ = [
    "DASHBOARD_UIDS",
    "DEFAULT_UID",
    "FOLDER_UID",
    "PLUGIN",
    "GrafanaError",
    "PushResult",
    "build_dashboards",
    "datasource_body",
    "push",
]
