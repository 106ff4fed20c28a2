"""Hand-computed invoices through the store and the HTTP API.

Every expected amount below is worked out by hand from tests/aggregator/pricing_config.py
(prices per million tokens); rounding is half-up to the cent per line.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from meterline.aggregator.app import create_app, reload_config
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator.pricing_config import write_config

DATED = "gpt-4o-2024-08-06"
SONNET = "claude-sonnet-4-20250514"

CALLS = [
    # OpenAI cached input + reasoning priced as output (gpt-4o has no reasoning price):
    # input 6000×2.50 · cache_read 4000×1.25 · output 1500×10 · reasoning 500×10
    Call(utc(2026, 3, 2), model="gpt-4o", response_model=DATED, input=10_000, cache_read=4_000,
         output=2_000, reasoning=500, response_id="dup-1"),
    # the same response reported twice: counted once
    Call(utc(2026, 3, 2), model="gpt-4o", response_model=DATED, input=10_000, cache_read=4_000,
         output=2_000, reasoning=500, response_id="dup-1"),
    # the last second at the old price, then the first at the new one (2026-03-16)
    Call(utc(2026, 3, 15, 23, 59, 59), model="gpt-4o", response_model=DATED, input=1_000_000),
    Call(utc(2026, 3, 16), model="gpt-4o", response_model=DATED, input=1_000_000, output=100_000),
    # Anthropic: input 50000 = 20000 net + 20000 cache reads + 10000 writes (4000 of 1 hour)
    Call(utc(2026, 3, 5), provider="anthropic", model=SONNET, input=50_000, cache_read=20_000,
         cache_creation=10_000, cache_creation_1h=4_000, output=1_000),
    # tier crossing: above 200000 input tokens every token is at the tier price …
    Call(utc(2026, 3, 6), provider="anthropic", model=SONNET, input=250_000, output=2_000),
    # … exactly 200000 is not above the threshold
    Call(utc(2026, 3, 6), provider="anthropic", model=SONNET, input=200_000),
    # reasoning with its own price: input 1000×2 · output 2000×8 · reasoning 3000×9
    Call(utc(2026, 3, 7), model="o3", input=1_000, output=5_000, reasoning=3_000),
    # unknown model: unpriced, listed, never $0
    Call(utc(2026, 3, 8), model="mystery-1", input=100, output=100),
    # failed call: stored, not billable for acme
    Call(utc(2026, 3, 9), model="gpt-4o", input=1_000, error="500"),
    # outside the month
    Call(utc(2026, 4, 1), model="gpt-4o", input=1_000_000),
    # beta bills failed calls: input 100000×2.50 = 0.25, output 10000×10 = 0.10
    Call(utc(2026, 3, 10), consumer="beta", model="gpt-4o", input=100_000, output=10_000,
         error="503"),
    # gamma only failed (default plan): no lines, counted
    Call(utc(2026, 3, 10), consumer="gamma", model="gpt-4o", input=100_000, error="429"),
]  # fmt: skip


def line(provider: str, model: str, token_type: str, quantity: int, price: str, amount: str):
    return {"provider": provider, "model": model, "token_type": token_type, "quantity": quantity,
            "unit_price_per_million": price, "amount": amount}  # fmt: skip


def tokens(**quantities: int) -> dict[str, int]:
    """An unbilled usage's ``quantities``: every token type, in order."""
    types = ("input", "cache_read", "cache_write", "cache_write_1h", "output", "reasoning")
    return {t: quantities.get(t, 0) for t in types}


ACME_MARCH = {
    "consumer": "acme",
    "period": "2026-03",
    "currency": "USD",
    "lines": [
        line("anthropic", SONNET, "input", 220_000, "3.00", "0.66"),  # 20000 + 200000
        line("anthropic", SONNET, "input", 250_000, "6.00", "1.50"),
        line("anthropic", SONNET, "cache_read", 20_000, "0.30", "0.01"),  # 0.006
        line("anthropic", SONNET, "cache_write", 6_000, "3.75", "0.02"),  # 0.0225
        line("anthropic", SONNET, "cache_write_1h", 4_000, "6.00", "0.02"),  # 0.024
        line("anthropic", SONNET, "output", 1_000, "15.00", "0.02"),  # 0.015, half-up
        line("anthropic", SONNET, "output", 2_000, "22.50", "0.05"),  # 0.045, half-up
        line("openai", DATED, "input", 1_000_000, "2.00", "2.00"),
        line("openai", DATED, "input", 1_006_000, "2.50", "2.52"),  # 2.515
        line("openai", DATED, "cache_read", 4_000, "1.25", "0.01"),  # 0.005
        line("openai", DATED, "output", 100_000, "8.00", "0.80"),
        line("openai", DATED, "output", 1_500, "10.00", "0.02"),  # 0.015
        line("openai", DATED, "reasoning", 500, "10.00", "0.01"),  # 0.005
        line("openai", "o3", "input", 1_000, "2.00", "0.00"),  # 0.002
        line("openai", "o3", "output", 2_000, "8.00", "0.02"),  # 0.016
        line("openai", "o3", "reasoning", 3_000, "9.00", "0.03"),  # 0.027
    ],
    "subtotal": "7.69",
    "markup": "1.54",  # 20 % of 7.69 = 1.538
    "total": "9.23",
    "unpriced": [
        {"provider": "openai", "model": "mystery-1", "requests": 1, "input_tokens": 100,
         "output_tokens": 100, "quantities": tokens(input=100, output=100)}
    ],
    "failed_requests": 1,
    # the failed call, not billed by acme's plan: listed with its tokens
    "failed": [
        {"provider": "openai", "model": "gpt-4o", "requests": 1, "input_tokens": 1000,
         "output_tokens": 0, "quantities": tokens(input=1000)}
    ],
    "invalid_requests": 0,
    "invalid": [],
    "known": True,
}  # fmt: skip


@pytest.fixture
def client(store: Store, tmp_path) -> TestClient:
    insert_calls(store, CALLS)
    settings = ServerSettings(config=write_config(tmp_path), admin_key="k")
    c = TestClient(create_app(settings, store))
    c.headers["authorization"] = "Bearer k"
    return c


def test_public_api_is_pinned() -> None:
    from meterline.aggregator import invoices

    assert set(invoices.__all__) == {
        "CLAIM_LEASE", "PeriodBusyError", "PeriodOpenError", "check_ended",
        "DEFAULT_PRICES_URL", "EXPORT_COLUMNS", "ExportStatus", "Finalization", "InvalidUsage", "Invoice",
        "InvoiceError", "InvoiceLine", "InvoiceView", "Period", "PriceChange", "PriceUpdate",
        "PriceUpdateError", "RepriceLine", "RepriceResult", "UnbilledUsage", "UnpricedUsage",
        "UsageCosts", "between",
        "build_invoices", "compute_invoices", "consumer_known", "diff_catalogues", "export_rows", "finalization",
        "finalize", "get_invoices", "iter_export_rows", "load_store_pricing", "month",
        "rate_usage", "reprice", "resolve_period", "stored_catalogue", "update_catalogue",
        "usage_costs",
    }  # fmt: skip


def test_hand_computed_invoice(client: TestClient) -> None:
    response = client.get("/v1/invoices/acme", params={"period": "2026-03"})
    assert response.status_code == 200, response.text
    assert response.json() == ACME_MARCH
    assert response.headers["x-meterline-invoice-status"] == "open"


def test_failed_calls_billed_only_by_plan(client: TestClient) -> None:
    beta = client.get("/v1/invoices/beta", params={"period": "2026-03"}).json()
    assert [(x["token_type"], x["amount"]) for x in beta["lines"]] == [
        ("input", "0.25"), ("output", "0.10")]  # fmt: skip
    assert (beta["total"], beta["failed_requests"]) == ("0.35", 1)
    gamma = client.get("/v1/invoices/gamma", params={"period": "2026-03"}).json()
    assert (gamma["lines"], gamma["total"], gamma["failed_requests"]) == ([], "0.00", 1)
    nobody = client.get("/v1/invoices/nobody", params={"period": "2026-03"}).json()
    assert (nobody["lines"], nobody["total"], nobody["failed_requests"]) == ([], "0.00", 0)
    assert (gamma["known"], nobody["known"]) == (True, False)  # only failed calls: known


def test_unknown_consumer_is_not_a_real_empty_invoice(client: TestClient, store: Store) -> None:
    """Never seen: ``known`` false; seen in another month only (or only an invalid or a
    failed call), or with a stored invoice: known."""

    def known(consumer: str, **params: str) -> bool:
        answer = client.get(f"/v1/invoices/{consumer}", params=params or {"period": "2026-03"})
        assert answer.status_code == 200
        return answer.json()["known"]

    assert known("acme") and known("gamma")
    assert not known("nobody") and not known("ACME") and not known("acme ")
    insert_calls(store, [Call(utc(2025, 12, 31, 23, 59), consumer="last-year", model="gpt-4o",
                              input=5), Call(utc(2026, 5, 1), consumer="later", model="x", input=1)])  # fmt: skip
    empty = client.get("/v1/invoices/last-year", params={"period": "2026-03"}).json()
    assert (empty["lines"], empty["total"], empty["known"]) == ([], "0.00", True)
    assert known("later") and known("later", **{"from": "2026-03-01", "to": "2026-03-02"})
    insert_calls(store, [Call(utc(2024, 1, 1), consumer="bad", model="gpt-4o", input=-1)])
    assert known("bad")
    # a finalised month: the same answer from the stored invoices
    assert client.post("/v1/periods/2026-03/finalize").status_code == 200
    assert known("acme") and not known("nobody") and known("last-year")


def test_cli_notes_an_unknown_consumer(store: Store, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from meterline.cli import app

    insert_calls(store, CALLS)
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    local = ["--data-dir", store.data_dir, "--database", store.database,
             "--config", str(write_config(tmp_path))]  # fmt: skip
    runner = CliRunner()
    text = runner.invoke(app, ["invoice", "nobody", "--period", "2026-03", *local]).output
    assert "no usage was ever recorded for consumer 'nobody'" in text
    text = runner.invoke(app, ["invoice", "gamma", "--period", "2026-03", *local]).output
    assert "no usage was ever recorded" not in text
    data = runner.invoke(app, ["invoice", "nobody", "--period", "2026-03", "--format", "json",
                               *local]).stdout  # fmt: skip
    assert '"known": false' in data


def test_from_to_range_and_errors(client: TestClient) -> None:
    window = {"from": "2026-03-16T00:00:00Z", "to": "2026-03-17T00:00:00Z"}
    body = client.get("/v1/invoices/acme", params=window).json()
    assert body["period"] == "2026-03-16T00:00:00Z/2026-03-17T00:00:00Z"
    assert [(x["token_type"], x["amount"]) for x in body["lines"]] == [
        ("input", "2.00"), ("output", "0.80")]  # fmt: skip
    assert body["total"] == "3.36"  # 2.80 + 20 %
    for params, message in [
        ({"period": "2026-13"}, "period '2026-13' is not a month in the form YYYY-MM"),
        ({}, "give 'period' (YYYY-MM) or both 'from' and 'to'"),
        ({"period": "2026-03", "from": "2026-03-01"}, "give either 'period' or 'from'"),
    ]:
        response = client.get("/v1/invoices/acme", params=params)
        assert response.status_code == 422 and message in response.json()["detail"]
    assert client.get("/v1/invoices/acme", params={"period": "2026-03"},
                      headers={"authorization": "Bearer wrong"}).status_code == 401  # fmt: skip


def test_usage_rows_carry_cost(client: TestClient) -> None:
    rows = client.get("/v1/usage", params={"group_by": "consumer", "from": "2026-03-01",
                                           "to": "2026-04-01"}).json()["rows"]  # fmt: skip
    by = {r["consumer"]: r for r in rows}
    # acme: exact, unrounded, with markup; the unknown model is unpriced, not $0
    assert by["acme"]["currency"] == "USD"
    assert by["acme"]["unpriced_requests"] == 1
    assert Decimal(by["acme"]["cost"]) == Decimal("7.6575") * Decimal("1.2")  # before rounding
    assert (by["beta"]["cost"], by["beta"]["unpriced_requests"]) == ("0.35", 0)
    assert (by["gamma"]["cost"], by["gamma"]["unpriced_requests"]) == ("0", 0)
    rows = client.get(
        "/v1/usage",
        params={
            "group_by": "model,day",
            "consumer": "acme",
            "from": "2026-03-08",
            "to": "2026-03-09",
        },
    ).json()["rows"]
    assert [(r["model"], r["cost"], r["unpriced_requests"]) for r in rows] == [
        ("mystery-1", "0", 1)]  # fmt: skip


def test_export_csv_and_json(client: TestClient) -> None:
    response = client.get("/v1/export", params={"period": "2026-03", "format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == ["consumer", "period", "currency", "provider", "model", "token_type",
                             "quantity", "unit_price_per_million", "amount", "status"]  # fmt: skip
    assert {r["consumer"] for r in rows} == {"acme", "beta", "gamma"}  # gamma: failed calls
    acme = [r for r in rows if r["consumer"] == "acme"]
    assert sum(Decimal(r["amount"]) for r in acme if r["status"] == "priced") == Decimal("7.69")
    assert sum(Decimal(r["amount"]) for r in acme if r["amount"]) == Decimal("9.23")  # + markup
    body = client.get("/v1/export", params={"period": "2026-03", "format": "json"}).json()
    assert len(body["rows"]) == len(rows) and body["rows"][0]["period"] == "2026-03"
    assert (
        client.get("/v1/export", params={"period": "2026-03", "format": "xml"}).status_code == 422
    )


def test_prices_endpoint(client: TestClient) -> None:
    body = client.get("/v1/prices", params={"source": "config"}).json()
    assert body["currency"] == "USD" and body["catalogue"].startswith("genai-prices")
    assert [p["model"] for p in body["prices"]][:2] == ["gpt-4o", "gpt-4o"]
    assert body["prices"][1]["effective_from"] == "2026-03-16T00:00:00Z"
    one = client.get("/v1/prices", params={"provider": "anthropic", "model": SONNET,
                                           "at": "2026-03-01T00:00:00Z"}).json()  # fmt: skip
    [price] = one["prices"]
    assert price["source"] == "config" and price["tiers"][0]["above_input_tokens"] == 200000
    catalogue = client.get("/v1/prices", params={"source": "catalogue", "provider": "anthropic"})
    assert any(p["model"] == "claude-opus-4-0" for p in catalogue.json()["prices"])
    none = client.get("/v1/prices", params={"provider": "openai", "model": "mystery-1"}).json()
    assert none["prices"] == []


def test_finalise_then_reprice(client: TestClient, store: Store, tmp_path) -> None:
    assert client.get("/v1/periods/2026-03").json()["status"] == "open"
    assert client.post("/v1/periods/2026-03/reprice").status_code == 409
    done = client.post("/v1/periods/2026-03/finalize")
    assert done.status_code == 200 and done.json()["revision"] == 1
    assert client.post("/v1/periods/2026-03/finalize").status_code == 409
    final = client.get("/v1/invoices/acme", params={"period": "2026-03"})
    assert final.json() == ACME_MARCH
    assert final.headers["x-meterline-invoice-status"] == "final; revision=1"

    # a price change after finalisation never alters the stored invoice …
    cheaper = (tmp_path / "meterline.yaml").read_text().replace('input: "2.50"', 'input: "1.50"')
    client.app.state.settings = ServerSettings(
        config=write_config(tmp_path, cheaper), admin_key="k"
    )
    assert reload_config(client.app)
    assert client.get("/v1/invoices/acme", params={"period": "2026-03"}).json() == ACME_MARCH
    # … reprice shows the difference (1,006,000 tokens × 1.00 less = 1.006 → 1.01 per line,
    # 1.21 with markup) and records it once as an adjustment
    dry = client.post("/v1/periods/2026-03/reprice", params={"dry_run": True}).json()
    assert dry["action"] == "none"
    result = client.post("/v1/periods/2026-03/reprice").json()
    acme = next(c for c in result["consumers"] if c["consumer"] == "acme")
    assert acme == {"consumer": "acme", "billed": "9.23", "repriced": "8.02", "difference": "-1.21"}
    assert result["action"] == "adjusted"
    again = client.post("/v1/periods/2026-03/reprice").json()
    assert again["action"] == "none"
    assert {c["difference"] for c in again["consumers"]} == {"0.00"}, again
    status = client.get("/v1/invoices/acme", params={"period": "2026-03"}).headers
    assert status["x-meterline-invoice-status"] == "final; revision=1; adjustments=-1.21"
    _, [(n, amount)] = store.query(
        "SELECT count(), sum(Amount) FROM {db}.invoice_adjustments WHERE ConsumerId = 'acme'"
    )
    assert (n, amount) == (1, Decimal("-1.21"))

    forced = client.post("/v1/periods/2026-03/reprice", params={"force": True}).json()
    assert (forced["action"], forced["revision"]) == ("reissued", 2)
    reissued = client.get("/v1/invoices/acme", params={"period": "2026-03"})
    assert reissued.json()["total"] == "8.02"
    assert reissued.headers["x-meterline-invoice-status"] == "final; revision=2"
