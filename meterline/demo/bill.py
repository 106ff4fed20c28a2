"""The demo's bill: each consumer's invoice as the invoice API returned it, as aligned text.

Contract: every figure shown is a string of the invoice JSON (``GET /v1/invoices/…``) —
quantities, unit prices, line amounts, subtotal, markup, total — printed as given, never
recomputed or re-rounded here (token counts only get thousands separators). What an
invoice does not bill is shown too, one line each: unpriced usage with the reason the
price lookup gives, failed calls the plan does not bill, calls with invalid usage.
The check against the simulator's ledger compares counts only (calls and tokens), never
money: the simulator knows the usage it served, not its price.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Invoice = Mapping[str, Any]
"""One ``GET /v1/invoices/{consumer}`` body."""

_HEAD = ("consumer", "model", "token type", "tokens", "per 1M", "amount")
_GAP = "  "


def _count(value: object) -> str:
    return f"{int(str(value)):,}"


def _unbilled_tokens(entry: Mapping[str, Any]) -> int:
    """Tokens of an ``unpriced``/``failed`` entry: its disjoint quantities, else the
    gross input and output (an invoice stored before quantities were kept)."""
    quantities = entry.get("quantities")
    if quantities is not None:
        return sum(int(v) for v in quantities.values())
    return int(entry["input_tokens"]) + int(entry["output_tokens"])


def invoice_tokens(invoice: Invoice) -> int:
    """Every token an invoice accounts for: its lines, unpriced and unbilled failed usage.

    Token types are disjoint (input net of cache, output net of reasoning), so this is
    the consumer's gross input + output tokens, billed or not. Calls with invalid usage
    carry no trusted tokens and are not included.
    """
    return (
        sum(int(line["quantity"]) for line in invoice["lines"])
        + sum(_unbilled_tokens(u) for u in invoice.get("unpriced", ()))
        + sum(_unbilled_tokens(u) for u in invoice.get("failed", ()))
    )


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _unbilled(invoice: Invoice, reasons: Mapping[tuple[str, str], str]) -> list[str]:
    notes = []
    for u in invoice.get("unpriced", ()):
        why = reasons.get((u["provider"], u["model"]), "no price for its tokens")
        notes.append(
            f"not billed, unpriced: {u['model']} ({_plural(int(u['requests']), 'call')}, "
            f"{_plural(_unbilled_tokens(u), 'token')}): {why}"
        )
    failed = list(invoice.get("failed", ()))
    if failed:
        calls = sum(int(u["requests"]) for u in failed)
        tokens = sum(_unbilled_tokens(u) for u in failed)
        models = ", ".join(sorted({u["model"] for u in failed}))
        notes.append(
            f"not billed, failed: {models} ({_plural(calls, 'call')}, "
            f"{_plural(tokens, 'token')}): the plan bills successes only"
        )
    for u in invoice.get("invalid", ()):
        notes.append(
            f"not billed, invalid usage: {u['model']} ({_plural(int(u['requests']), 'call')}): "
            f"{u['reason']}"
        )
    return notes


def _totals(invoice: Invoice, markup_percent: str | None) -> str:
    parts = [f"subtotal {invoice['subtotal']}"]
    if markup_percent is not None or invoice["markup"] not in ("0", "0.00"):
        label = f"markup {markup_percent}%" if markup_percent is not None else "markup"
        parts.append(f"{label} {invoice['markup']}")
    parts.append(f"total {invoice['total']} {invoice['currency']}")
    return " + ".join(parts[:-1]) + " = " + parts[-1] if len(parts) > 1 else parts[0]


@dataclass(frozen=True)
class _Row:
    cells: tuple[str, ...] | None
    """Table cells, or ``None`` for a note spanning the line items' columns."""
    text: str = ""
    right: bool = False
    """A note aligned to the right edge of the table (totals)."""


def bill_lines(
    invoices: Sequence[Invoice],
    *,
    markup_percent: Mapping[str, str] | None = None,
    unpriced_reasons: Mapping[tuple[str, str], str] | None = None,
) -> list[str]:
    """The bill: a header, then per consumer its line items, totals and unbilled usage.

    Args:
        invoices: invoice bodies as the API returned them, in the order to show.
        markup_percent: ``{consumer: percent}`` of the plans with a markup (the
            configuration's figure; the amount is the invoice's).
        unpriced_reasons: ``{(provider, model): why}`` for unpriced usage.
    """
    markups = markup_percent or {}
    reasons = unpriced_reasons or {}
    rows: list[_Row] = []
    for invoice in invoices:
        consumer = invoice["consumer"] or "(unattributed)"
        previous_model = None
        for i, line in enumerate(invoice["lines"]):
            model = line["model"] if line["model"] != previous_model else ""
            previous_model = line["model"]
            rows.append(
                _Row(
                    (
                        consumer if i == 0 else "",
                        model,
                        line["token_type"],
                        _count(line["quantity"]),
                        line["unit_price_per_million"],
                        line["amount"],
                    )
                )
            )
        if not invoice["lines"]:
            rows.append(_Row((consumer, "(nothing billed)", "", "", "", "")))
        rows.append(_Row(None, _totals(invoice, markups.get(invoice["consumer"])), right=True))
        rows.extend(_Row(None, note) for note in _unbilled(invoice, reasons))
    table = [r.cells for r in rows if r.cells is not None]
    widths = [max(len(c) for c in column) for column in zip(_HEAD, *table, strict=True)]
    width = sum(widths) + len(_GAP) * (len(widths) - 1)
    indent = " " * (widths[0] + len(_GAP))

    def cells_line(cells: Iterable[str]) -> str:
        out = []
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            out.append(cell.rjust(w) if i >= 3 else cell.ljust(w))
        return _GAP.join(out).rstrip()

    out = [cells_line(_HEAD)]
    for row in rows:
        if row.cells is not None:
            out.append(cells_line(row.cells))
        elif row.right:
            out.append(row.text.rjust(width))
        else:
            out.append(indent + row.text)
    return out


def ledger_line(
    expected: Mapping[str, int],
    metered: Mapping[str, Any],
    invoices: Sequence[Invoice],
    *,
    billed_range_tokens: int,
    earlier_usage: bool = False,
) -> tuple[bool, str]:
    """``(matches, line)``: the simulator's ledger against ``/v1/usage``, and the
    invoices against ``/v1/usage`` over the invoices' range.

    Args:
        expected: the ledger's totals (``/v1/usage``'s keys).
        metered: what ``/v1/usage`` gained during the run, same keys.
        invoices: the bills shown.
        billed_range_tokens: input + output tokens ``/v1/usage`` has in the bills' range;
            the invoices together must account for every one of them.
        earlier_usage: the store held usage before this run (a kept ``--data-dir``), so
            the bills hold more than the ledger.
    """
    wrong = [
        f"{key} {value:,} served, {int(metered.get(key, 0)):,} metered"
        for key, value in expected.items()
        if int(metered.get(key, 0)) != value
    ]
    invoiced = sum(invoice_tokens(i) for i in invoices)
    if invoiced != billed_range_tokens:
        wrong.append(f"tokens {billed_range_tokens:,} in /v1/usage, {invoiced:,} on the invoices")
    if wrong:
        return False, "Ledger check: DIFFERS from the simulator's ledger: " + "; ".join(wrong)
    calls = _plural(expected["requests"], "call")
    failed = expected.get("failed_requests", 0)
    if failed:
        calls += f" ({failed:,} failed)"
    served = expected["input_tokens"] + expected["output_tokens"]
    if earlier_usage:
        return True, (
            f"Ledger check: this run's usage matches the simulator's ledger: {calls}, "
            f"{served:,} tokens (the bills hold earlier runs too)"
        )
    return True, (
        "Ledger check: /v1/usage and the invoices match the simulator's ledger: "
        f"{calls}, {served:,} tokens"
    )
