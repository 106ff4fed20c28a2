"""The overview dashboard: spend and tokens over time, who spends, cache savings, and the
share of failed and unpriced calls.

Money panels read ``rated_usage_current`` only (the invoices' money); token tables read
counted usage (``/v1/usage``'s numbers). "Invoice totals" rounds as an invoice does: each
line (provider, model, token type, unit price) to the cent, half up, then the plan's
markup of the subtotal.
"""

from __future__ import annotations

from typing import Any

from meterline.aggregator.grafana._panels import (
    BILLED,
    CACHE_SAVINGS,
    CONSUMER,
    COUNTED,
    RATED,
    Layout,
    counted_filter,
    dashboard,
    filter_variables,
    rated_filter,
)

UID = "meterline-overview"


def invoice_totals_sql(where: str, minor_units: int) -> str:
    """Per consumer: subtotal, markup and total as its invoice computes them."""
    return f"""SELECT consumer, sum(line) AS subtotal,
       round(subtotal * any(fraction), {minor_units}) AS markup, subtotal + markup AS total
FROM (
    SELECT {CONSUMER} AS consumer, round(sum(Amount), {minor_units}) AS line,
           any(MarkupFraction) AS fraction
    FROM {RATED}
    WHERE {where} AND Status = 'billed'
    GROUP BY ConsumerId, Provider, Model, TokenType, UnitPricePerMillion
)
GROUP BY consumer
ORDER BY total DESC"""


def build(
    *, datasource_uid: str | None, database: str, money: str, minor_units: int
) -> dict[str, Any]:
    where = rated_filter()
    bucket = "toStartOfInterval(Hour, INTERVAL greatest($__interval_s, 3600) second)"
    layout = Layout()
    layout.add("stat", "Spend", f"SELECT {BILLED} AS spend FROM {RATED} WHERE {where}",
               unit=money, decimals=2, w=6, h=5,
               description="Billed amount with the plans' markup, exact (invoices round "
               "per line: see Invoice totals).")  # fmt: skip
    layout.add("stat", "Cache savings",
               f"SELECT {CACHE_SAVINGS} AS savings FROM {RATED} WHERE {where}",
               unit=money, decimals=2, w=6, h=5,
               description="What cached input tokens would have cost at the input price, "
               "less what they cost (provider prices, before markup).")  # fmt: skip
    layout.add("stat", "Failed calls",
               f"SELECT sumIf(Requests, Billable = 0 AND Status != 'invalid')"
               f" / greatest(sum(Requests), 1) AS failed FROM {RATED} WHERE {where}",
               unit="percentunit", w=6, h=5,
               description="Share of calls that failed (non-2xx or error.type).")  # fmt: skip
    layout.add("stat", "Unpriced calls",
               f"SELECT sumIf(Requests, Status = 'unpriced') / greatest(sum(Requests), 1)"
               f" AS unpriced FROM {RATED} WHERE {where}",
               unit="percentunit", w=6, h=5,
               description="Share of calls of a model without a price: counted, never "
               "billed as 0 (Data quality lists them).")  # fmt: skip
    for by, column in (("consumer", CONSUMER), ("model", "Model"), ("provider", "Provider")):
        layout.add("timeseries", f"Spend by {by}",
                   f"SELECT {bucket} AS time, {column} AS {by}, {BILLED} AS spend\n"
                   f"FROM {RATED}\nWHERE {where}\nGROUP BY time, {by}\nORDER BY time",
                   unit=money, w=8 if by != "consumer" else 24, h=8)  # fmt: skip
    layout.add("timeseries", "Tokens by type",
               f"SELECT {bucket} AS time, TokenType AS type, sum(Quantity) AS tokens\n"
               f"FROM {RATED}\nWHERE {where} AND Status != 'invalid'\n"
               "GROUP BY time, type\nORDER BY time",
               unit="short", w=8, h=8,
               description="Disjoint types: input net of cache, cache reads and writes, "
               "output net of reasoning, reasoning.")  # fmt: skip
    layout.add("table", "Top consumers",
               f"SELECT {CONSUMER} AS consumer, sum(Requests) AS requests,"
               f" sumIf(Quantity, Status != 'invalid') AS tokens, {BILLED} AS spend,"
               f" sumIf(Requests, Status = 'unpriced') AS unpriced\n"
               f"FROM {RATED}\nWHERE {where}\nGROUP BY consumer\nORDER BY spend DESC\nLIMIT 20",
               unit="short", w=12, h=9, overrides={"spend": money})  # fmt: skip
    layout.add("bargauge", "Top features",
               f"SELECT if(Feature = '', '(none)', Feature) AS feature, {BILLED} AS spend\n"
               f"FROM {RATED}\nWHERE {where}\nGROUP BY feature\nORDER BY spend DESC\nLIMIT 10",
               unit=money, w=12, h=9)  # fmt: skip
    layout.add("table", "Invoice totals", invoice_totals_sql(where, minor_units),
               unit=money, w=24, h=8,
               description="Each consumer's invoice for the range: lines rounded to the "
               "cent (half up), then the plan's markup of the subtotal. With every "
               "variable on All and a range of whole UTC hours, equal to "
               "/v1/invoices.")  # fmt: skip
    layout.add("table", "Usage by consumer and model",
               f"SELECT {CONSUMER} AS consumer, Provider AS provider, ResponseModel AS model,"
               " count() AS requests, countIf(Billable = 0 AND UsageError = '') AS failed,"
               " countIf(UsageError != '') AS invalid,\n"
               "       sumIf(InputTokens, UsageError = '') AS input,"
               " sumIf(CacheReadInputTokens, UsageError = '') AS cache_read,"
               " sumIf(CacheCreationInputTokens, UsageError = '') AS cache_write,"
               " sumIf(OutputTokens, UsageError = '') AS output,"
               " sumIf(ReasoningOutputTokens, UsageError = '') AS reasoning\n"
               f"FROM {COUNTED}\nWHERE {counted_filter()}\n"
               "GROUP BY consumer, provider, model\nORDER BY input + output DESC",
               unit="short", w=24, h=9,
               description="Counted usage (each response once), the numbers of "
               "/v1/usage?group_by=consumer,model; input includes cache reads and writes, "
               "output includes reasoning.")  # fmt: skip
    return dashboard(
        uid=UID,
        title="meterline — overview",
        description="Spend and tokens by consumer, model and provider (meterline).",
        variables=filter_variables(),
        layout=layout,
        datasource_uid=datasource_uid,
        database=database,
    )
