"""The demo's bill and ledger check, from invoice bodies: no subprocess, no store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from meterline.demo.bill import bill_lines, invoice_tokens, ledger_line
from meterline.demo.links import clickhouse_query, curl_command
from meterline.demo.runner import bill_period, differences


def _invoice(consumer: str = "zeta", **over: Any) -> dict[str, Any]:
    lines = [
        {"provider": "openai", "model": "gpt-4o", "token_type": "input", "quantity": 1006000,
         "unit_price_per_million": "2.50", "amount": "2.52"},
        {"provider": "openai", "model": "gpt-4o", "token_type": "output", "quantity": 1,
         "unit_price_per_million": "10", "amount": "9.99"},
    ]  # fmt: skip
    doc: dict[str, Any] = {
        "consumer": consumer,
        "period": "2026-03",
        "currency": "USD",
        "lines": lines,
        "subtotal": "12.51",
        "markup": "0.00",
        "total": "12.51",
        "unpriced": [],
        "failed_requests": 0,
        "failed": [],
        "invalid_requests": 0,
        "invalid": [],
    }
    doc.update(over)
    return doc


def test_figures_are_printed_as_the_invoice_gives_them() -> None:
    # 1 output token at 10/1M is 0.00001, not 9.99: the bill shows the invoice's string.
    lines = bill_lines([_invoice()])
    assert lines[0].split() == [
        "consumer",
        "model",
        "token",
        "type",
        "tokens",
        "per",
        "1M",
        "amount",
    ]
    assert lines[1].split() == ["zeta", "gpt-4o", "input", "1,006,000", "2.50", "2.52"]
    assert lines[2].split() == ["output", "1", "10", "9.99"]  # model not repeated
    assert lines[3].strip() == "subtotal 12.51 = total 12.51 USD"
    assert lines[3].endswith("USD") and len(lines[3]) == len(lines[1])  # right-aligned


def test_markup_shown_for_a_plan_with_markup_even_when_it_rounds_to_zero() -> None:
    with_plan = bill_lines([_invoice(markup="0.00")], markup_percent={"zeta": "20"})
    assert with_plan[3].strip() == "subtotal 12.51 + markup 20% 0.00 = total 12.51 USD"
    other = bill_lines([_invoice(markup="1.25", total="13.76")])
    assert other[3].strip() == "subtotal 12.51 + markup 1.25 = total 13.76 USD"
    plain = bill_lines([_invoice()], markup_percent={"acme": "20"})
    assert "markup" not in plain[3]


def test_unbilled_usage_is_listed_with_its_reason() -> None:
    invoice = _invoice(
        unpriced=[{"provider": "openai", "model": "mystery-1", "requests": 2, "input_tokens": 100,
                   "output_tokens": 50, "quantities": {"input": 90, "cache_read": 10, "output": 50}}],
        failed=[{"provider": "anthropic", "model": "claude-x", "requests": 3, "input_tokens": 7,
                 "output_tokens": 0}],
        failed_requests=3,
        invalid=[{"provider": "openai", "model": "gpt-4o", "requests": 1,
                  "reason": "gen_ai.usage.input_tokens: not a non-negative integer"}],
    )  # fmt: skip
    notes = [line.strip() for line in bill_lines([invoice], unpriced_reasons={
        ("openai", "mystery-1"): "no price known"})[4:]]  # fmt: skip
    assert notes == [
        "not billed, unpriced: mystery-1 (2 calls, 150 tokens): no price known",
        "not billed, failed: claude-x (3 calls, 7 tokens): the plan bills successes only",
        "not billed, invalid usage: gpt-4o (1 call): "
        "gen_ai.usage.input_tokens: not a non-negative integer",
    ]
    # every token the invoice accounts for: lines + unpriced + failed (invalid: untrusted)
    assert invoice_tokens(invoice) == 1006000 + 1 + 150 + 7


def test_an_invoice_without_lines_still_has_a_row() -> None:
    lines = bill_lines([_invoice(lines=[], subtotal="0.00", total="0.00")])
    assert lines[1].split() == ["zeta", "(nothing", "billed)"]


def test_ledger_line_matches_and_differs() -> None:
    expected = {"requests": 2, "failed_requests": 1, "input_tokens": 1006000, "output_tokens": 1}
    ok, line = ledger_line(expected, dict(expected), [_invoice()], billed_range_tokens=1006001)
    assert ok
    assert line == (
        "Ledger check: /v1/usage and the invoices match the simulator's ledger: "
        "2 calls (1 failed), 1,006,001 tokens"
    )
    ok, line = ledger_line(
        expected, {**expected, "input_tokens": 1006002}, [_invoice()], billed_range_tokens=1006001
    )
    assert not ok and "input_tokens 1,006,000 served, 1,006,002 metered" in line
    ok, line = ledger_line(expected, expected, [_invoice()], billed_range_tokens=1006005)
    assert not ok and "tokens 1,006,005 in /v1/usage, 1,006,001 on the invoices" in line
    ok, line = ledger_line(
        expected, expected, [_invoice()], billed_range_tokens=1006001, earlier_usage=True
    )
    assert ok and "earlier runs" in line
    assert differences({"requests": 2, "input_tokens": 3}, {"requests": 2, "input_tokens": 4}) == {
        "input_tokens": (3, 4)
    }


@pytest.mark.parametrize(
    ("first", "last", "query", "covered"),
    [
        (datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 3, 5, 0, 1, tzinfo=UTC),
         {"period": "2026-03"}, ("2026-03-01", "2026-04-01")),
        (datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2027, 1, 1, 0, 0, 5, tzinfo=UTC),
         {"from": "2026-12-01T00:00:00+00:00", "to": "2027-02-01T00:00:00+00:00"},
         ("2026-12-01", "2027-02-01")),
        (datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
         {"period": "2026-12"}, ("2026-12-01", "2027-01-01")),
    ],
)  # fmt: skip
def test_bill_period(
    first: datetime, last: datetime, query: dict[str, str], covered: tuple[str, str]
) -> None:
    assert bill_period(first, last) == (query, covered)


def test_curl_example_quotes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("METERLINE_ADMIN_KEY", "METERLINE_CLICKHOUSE_HTTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    query = clickhouse_query("2026-12-01", "2027-01-01")
    assert curl_command("http://127.0.0.1:8123", query) == (
        f'curl -sG http://127.0.0.1:8123/ --data-urlencode "query={query}"'
    )
    with pytest.raises(ValueError, match="double quotes"):
        curl_command("http://127.0.0.1:8123", 'SELECT "x"')
