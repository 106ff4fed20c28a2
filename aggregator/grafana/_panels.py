"""Building blocks of the dashboards: the datasource, variables, panels and their SQL.

Every query goes to ``grafana-clickhouse-datasource`` through the ``${datasource}``
variable (no datasource uid in a panel) and names its tables ``${database}.<table>`` (a
hidden constant variable), so one JSON works against any database the datasource's
default database may not be. Macros are the plugin's own: ``$__fromTime``,
``$__toTime``, ``$__timeFilter``, ``$__timeInterval``, ``$__interval_s`` (expanded in
its backend) and ``$__conditionalAll`` (its frontend), with ``${var:singlequote}``
(Grafana's own escaping of quotes) for selected values.

Known quirk of the plugin: ``$__conditionalAll`` reads a selection whose value is the
empty string as "All"; the consumer variable therefore never offers ``''`` (usage with
no consumer is shown as ``(unattributed)`` under All).
"""

from __future__ import annotations

from typing import Any

PLUGIN = "grafana-clickhouse-datasource"
DATASOURCE = {"type": PLUGIN, "uid": "${datasource}"}

RATED = "${database}.rated_usage_current"
"""Money: the rated rows in force (docs/rated-usage.md), per UTC hour."""
COUNTED = "${database}.llm_usage_counted(start = $__fromTime, end = $__toTime)"
"""Counted usage (each response once) in the dashboard's range ``[from, to)``."""

HOURS = "Hour >= $__fromTime AND Hour < $__toTime"
"""The hours of rated usage that *start* in the dashboard's range: money is hourly, so a
range that does not start and end on whole UTC hours covers its partial hours whole."""

BILLED = "sumIf(Amount + MarkupAmount, Status = 'billed')"
"""Money billed (the plan's markup included): the same sum as ``/v1/usage``'s cost."""
CACHE_SAVINGS = "sumIf(AtInputPrice - Amount, TokenType = 'cache_read' AND Status = 'billed')"
"""What cached reads would have cost at the input price, less what they cost."""
CONSUMER = "if(ConsumerId = '', '(unattributed)', ConsumerId)"
COUNTED_MODEL = "if(ResponseModel != '', ResponseModel, RequestModel)"


def selected(column: str, var: str) -> str:
    """``column`` among the values selected in the multi-value variable ``var`` (All: no
    condition)."""
    return f"$__conditionalAll({column} IN (${{{var}:singlequote}}), ${var})"


def rated_filter(*, consumer: str = "multi") -> str:
    """The rated rows of the range and of the variables' selections."""
    who = (
        "ConsumerId = ${consumer:singlequote}"
        if consumer == "single"
        else selected("ConsumerId", "consumer")
    )
    return " AND ".join(
        [
            HOURS,
            who,
            selected("Feature", "feature"),
            selected("Provider", "provider"),
            selected("Model", "model"),
        ]
    )


def counted_filter(*, consumer: str = "multi") -> str:
    """The counted usage of the variables' selections (the range is the view's)."""
    who = (
        "ConsumerId = ${consumer:singlequote}"
        if consumer == "single"
        else selected("ConsumerId", "consumer")
    )
    return " AND ".join(
        [
            who,
            selected("Feature", "feature"),
            selected("Provider", "provider"),
            selected(COUNTED_MODEL, "model"),
        ]
    )


def money_unit(currency: str) -> str:
    """Grafana's unit for amounts in ``currency`` (ISO 4217)."""
    known = {"USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "INR", "CNY", "SEK", "NOK"}
    code = currency.upper()
    return f"currency{code}" if code in known else f"suffix: {code}"


def datasource_variable(uid: str | None) -> dict[str, Any]:
    current = {"text": uid, "value": uid} if uid else {}
    return {
        "name": "datasource",
        "label": "Datasource",
        "type": "datasource",
        "query": PLUGIN,
        "current": current,
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def database_variable(database: str) -> dict[str, Any]:
    return {
        "name": "database",
        "type": "constant",
        "hide": 2,
        "query": database,
        "current": {"text": database, "value": database},
        "options": [{"text": database, "value": database, "selected": True}],
    }


def query_variable(
    name: str, label: str, sql: str, *, multi: bool = True, include_all: bool = True
) -> dict[str, Any]:
    current = {"text": ["All"], "value": ["$__all"]} if include_all else {}
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"editorType": "sql", "rawSql": sql},
        "definition": sql,
        "multi": multi,
        "includeAll": include_all,
        "current": current,
        "refresh": 2,
        "sort": 1,
        "regex": "",
        "options": [],
        "hide": 0,
    }


def distinct(column: str, *, where: str = "1") -> str:
    """The values a variable offers: from the rated rows of the range, never ``''``."""
    return (
        f"SELECT DISTINCT {column} FROM {RATED}\n"
        f"WHERE {HOURS} AND {column} != '' AND {where}\nORDER BY {column}"
    )


def filter_variables(*, consumer: str = "multi") -> list[dict[str, Any]]:
    """consumer, feature, provider and model (``consumer="single"``: one consumer)."""
    if consumer == "single":
        who = query_variable(
            "consumer", "Consumer", distinct("ConsumerId"), multi=False, include_all=False
        )
    else:
        who = query_variable("consumer", "Consumer", distinct("ConsumerId"))
    return [
        who,
        query_variable("feature", "Feature", distinct("Feature")),
        query_variable("provider", "Provider", distinct("Provider")),
        query_variable("model", "Model", distinct("Model")),
    ]


class Layout:
    """Panels placed left to right on a 24-column grid, wrapping to the next row."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def add(
        self,
        kind: str,
        title: str,
        sql: str,
        *,
        unit: str,
        w: int,
        h: int = 8,
        description: str = "",
        overrides: dict[str, str] | None = None,
        decimals: int | None = None,
    ) -> dict[str, Any]:
        """Add a panel of ``kind`` (``timeseries`` queries return ``time`` first).

        Args:
            unit: Grafana's unit of the panel's values (every panel has one).
            overrides: a unit per column of a table whose columns differ.
        """
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        series = kind == "timeseries"
        defaults: dict[str, Any] = {"unit": unit}
        if decimals is not None:
            defaults["decimals"] = decimals
        panel = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DATASOURCE,
            "gridPos": {"x": self._x, "y": self._y, "w": w, "h": h},
            "fieldConfig": {
                "defaults": defaults,
                "overrides": [
                    {
                        "matcher": {"id": "byName", "options": column},
                        "properties": [{"id": "unit", "value": column_unit}],
                    }
                    for column, column_unit in (overrides or {}).items()
                ],
            },
            "options": {},
            "targets": [
                {
                    "datasource": DATASOURCE,
                    "refId": "A",
                    "editorType": "sql",
                    "format": 0 if series else 1,
                    "queryType": "timeseries" if series else "table",
                    "rawSql": sql,
                }
            ],
        }
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)
        return panel


def dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    variables: list[dict[str, Any]],
    layout: Layout,
    datasource_uid: str | None,
    database: str,
    time_from: str = "now-7d",
) -> dict[str, Any]:
    """A dashboard document (``schemaVersion`` 39) with the datasource and database
    variables first."""
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["meterline"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "1m",
        "time": {"from": time_from, "to": "now"},
        "templating": {
            "list": [datasource_variable(datasource_uid), database_variable(database), *variables]
        },
        "annotations": {"list": []},
        "links": [
            {
                "title": "meterline dashboards",
                "type": "dashboards",
                "tags": ["meterline"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": layout.panels,
    }
