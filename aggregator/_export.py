"""The billing export: each invoice as flat rows, every figure of the invoice in a row.

Contract (docs/pricing.md "The billing export"): a consumer's rows are its invoice — the
invoice's JSON form rearranged, so the two cannot disagree — and every consumer with an
invoice (usage of any kind in the period) has rows. ``status`` says what a row is:

- ``priced``: an invoice line (quantity × unit price = amount);
- ``markup``: the plan's markup on the priced rows (only when not zero);
- ``adjustment``: what ``reprice`` recorded against a finalised invoice (when not zero);
- ``unpriced``: usage of a model without a price; ``failed``: failed calls the consumer's
  plan does not bill (a plan that bills them has them as ``priced``). These rows carry
  tokens only: ``unit_price_per_million`` and ``amount`` are empty in CSV and ``null`` in
  JSON, never 0. Each such usage has its ``input`` and ``output`` rows even when they are
  0 tokens (so it is never invisible), and a row for each other token type it has.
- ``invalid``: calls whose reported token counts the store rejected (docs/counting.md):
  one row per (provider, model, reason) with ``token_type`` ``requests`` and the number
  of calls as ``quantity`` (their tokens are not trusted, so none are shown); no price,
  no amount.

Quantities of every status are the same disjoint token types as invoice lines (``input``
net of cache reads and writes, ``output`` net of reasoning). An invoice stored before the
types were kept for unbilled usage has ``input_total`` / ``output_total`` rows instead
(gross input including cache, gross output including reasoning). Per consumer:
sum(priced) = ``subtotal``, + markup = ``total``; adjustments are on top.

A new kind of unbilled usage is one more entry in :data:`UNBILLED`. Standard library only
(the CLI renders exports without the server's dependencies).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Any

EXPORT_COLUMNS: tuple[str, ...] = (
    "consumer",
    "period",
    "currency",
    "provider",
    "model",
    "token_type",
    "quantity",
    "unit_price_per_million",
    "amount",
    "status",
)
"""Columns of the billing export (``status`` last, so the older columns keep their place)."""


class ExportStatus(StrEnum):
    """What an export row is."""

    PRICED = "priced"
    MARKUP = "markup"
    ADJUSTMENT = "adjustment"
    UNPRICED = "unpriced"
    FAILED = "failed"
    INVALID = "invalid"


UNBILLED: tuple[tuple[ExportStatus, str], ...] = (
    (ExportStatus.UNPRICED, "unpriced"),
    (ExportStatus.FAILED, "failed"),
)
"""Kinds of usage an invoice lists without billing it: status, and the invoice's key."""

_ALWAYS = ("input", "output")
"""Token types an unbilled usage shows even at 0 tokens."""


def _nonzero(money: str | None) -> bool:
    return money is not None and Decimal(money) != 0


def export_rows(invoice: Any, *, adjustments: str | None = None) -> list[dict[str, Any]]:
    """The export rows of one invoice.

    Args:
        invoice: an ``Invoice``, or its JSON form (``Invoice.to_dict()``, what the API
            returns).
        adjustments: the sum of adjustments recorded against it (a decimal string).
    """
    if not isinstance(invoice, Mapping):
        invoice = invoice.to_dict()
    head = {k: invoice[k] for k in ("consumer", "period", "currency")}

    def row(status: ExportStatus, **values: Any) -> dict[str, Any]:
        cells = {c: values.get(c) for c in EXPORT_COLUMNS[3:9]}
        return head | cells | {"status": status.value}

    rows = [row(ExportStatus.PRICED, **line) for line in invoice["lines"]]
    if _nonzero(invoice.get("markup")):
        rows.append(row(ExportStatus.MARKUP, amount=invoice["markup"]))
    if _nonzero(adjustments):
        rows.append(row(ExportStatus.ADJUSTMENT, amount=adjustments))
    for status, key in UNBILLED:
        for usage in invoice.get(key) or ():
            where = {"provider": usage["provider"], "model": usage["model"]}
            rows.extend(
                row(status, **where, token_type=token, quantity=quantity)
                for token, quantity in _quantities(usage)
            )
    for usage in invoice.get("invalid") or ():
        where = {"provider": usage["provider"], "model": usage["model"]}
        rows.append(row(ExportStatus.INVALID, **where, token_type="requests",
                        quantity=usage["requests"]))  # fmt: skip
    return rows


def _quantities(usage: Mapping[str, Any]) -> Iterable[tuple[str, int]]:
    quantities = usage.get("quantities")
    if quantities is None:  # stored before unbilled usage kept its token types
        return [("input_total", usage["input_tokens"]), ("output_total", usage["output_tokens"])]
    return [(t, q) for t, q in quantities.items() if q or t in _ALWAYS]
