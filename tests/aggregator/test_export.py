"""The billing export lists everything the invoice shows (issue 8 §5), through usage stored
in chdb, over the API (CSV and JSON) and the CLI (local store and a running server).

Every consumer's export rows are compared with its invoice: priced rows are the invoice
lines, markup and adjustments have rows of their own, and unpriced or failed (not billed)
usage has rows with its tokens and no price or amount — empty in CSV, ``null`` in JSON.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meterline.aggregator.app import create_app, reload_config
from meterline.aggregator.invoices import export_rows, get_invoices, load_store_pricing, month
from meterline.aggregator.tenancy import Scope
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator.pricing_config import CONFIG_YAML, write_config
from tests.aggregator.test_invoices import CALLS

COLUMNS = ["consumer", "period", "currency", "provider", "model", "token_type", "quantity",
           "unit_price_per_million", "amount", "status"]  # fmt: skip

# late-1 has a price only from 2026-03-20 (no catalogue price): priced in one segment of
# the month, unpriced in the other. input-only has no output price: a call with output
# tokens is unpriced as a whole.
EXPORT_CONFIG = CONFIG_YAML.replace(
    "plans:",
    """  - provider: openai
    model: late-1
    effective_from: 2026-03-20
    per_million_tokens: {input: "1.00", output: "2.00"}
  - provider: openai
    model: input-only
    per_million_tokens: {input: "1.00"}
plans:""",
)

EXPORT_CALLS = [
    *CALLS,
    # a consumer whose only usage is an unknown model (the case), with cache
    # reads and reasoning: input 1000 = 600 net + 400 cache reads; output 300 = 200 + 100
    Call(utc(2026, 3, 3), consumer="solo", model="mystery-2", input=1_000, cache_read=400,
         output=300, reasoning=100),
    # unattributed usage, priced and unpriced
    Call(utc(2026, 3, 3), consumer="", model="mystery-2", input=10, output=5),
    Call(utc(2026, 3, 3), consumer="", model="gpt-4o", input=1_000_000),
    # one model, unpriced before 2026-03-20 and priced from then on
    Call(utc(2026, 3, 19, 23, 59, 59), consumer="split", model="late-1", input=1_000, output=10),
    Call(utc(2026, 3, 20), consumer="split", model="late-1", input=1_000_000, output=1_000_000),
    # no output price: the output tokens make the usage unpriced (the invoice rates calls
    # in groups, so both calls of the group are), never $0 for those tokens
    Call(utc(2026, 3, 4), consumer="partial", model="input-only", input=2_000_000, output=7),
    Call(utc(2026, 3, 4), consumer="partial", model="input-only", input=3_000_000),
    # an unknown model's call without tokens: still listed
    Call(utc(2026, 3, 4), consumer="empty", model="mystery-3"),
    # a failed call of an unknown model, not billed (default plan): failed, not unpriced …
    Call(utc(2026, 3, 11), consumer="delta", model="mystery-3", input=70, output=30, error="500"),
    # … and billed by beta's plan: then it is unpriced
    Call(utc(2026, 3, 11), consumer="beta", model="mystery-3", input=7, output=3, error="502"),
]  # fmt: skip


@pytest.fixture
def client(store: Store, tmp_path) -> TestClient:
    insert_calls(store, EXPORT_CALLS)
    settings = ServerSettings(config=write_config(tmp_path, EXPORT_CONFIG), admin_key="k")
    c = TestClient(create_app(settings, store))
    c.headers["authorization"] = "Bearer k"
    return c


def csv_rows(text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == COLUMNS
    return list(reader)


def by_consumer(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        found[row["consumer"]].append(row)
    return found


def unbilled_totals(rows: list[dict[str, Any]], status: str) -> dict[tuple[str, str], list[int]]:
    """(provider, model) → [gross input, gross output] from a status's rows."""
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        if r["status"] == status:
            side = 1 if r["token_type"] in ("output", "reasoning") else 0
            totals[(r["provider"], r["model"])][side] += int(r["quantity"])
    return dict(totals)


def assert_matches(rows: list[dict[str, Any]], invoice: dict[str, Any], empty: Any) -> None:
    """One consumer's export rows say exactly what its invoice says."""
    priced = [r for r in rows if r["status"] == "priced"]
    assert [{k: r[k] for k in COLUMNS[3:9]} for r in priced] == [
        {k: str(v) if empty == "" else v for k, v in line.items()} for line in invoice["lines"]
    ]
    amounts = {s: sum((Decimal(r["amount"]) for r in rows if r["status"] == s), Decimal(0))
               for s in ("priced", "markup")}  # fmt: skip
    assert amounts["priced"] == Decimal(invoice["subtotal"])
    assert amounts["markup"] == Decimal(invoice["markup"])
    assert amounts["priced"] + amounts["markup"] == Decimal(invoice["total"])
    for status in ("unpriced", "failed"):
        expected = {(u["provider"], u["model"]): [u["input_tokens"], u["output_tokens"]]
                    for u in invoice[status]}  # fmt: skip
        assert unbilled_totals(rows, status) == expected, status
        for r in rows:
            if r["status"] == status:  # tokens, never a price or an amount (nor 0)
                assert (r["unit_price_per_million"], r["amount"]) == (empty, empty)
    assert {r["status"] for r in rows} <= {"priced", "markup", "unpriced", "failed"}
    assert all((r["consumer"], r["period"], r["currency"]) == (
        invoice["consumer"], invoice["period"], invoice["currency"]) for r in rows)  # fmt: skip


def march_invoices(store: Store, config_path) -> dict[str, dict[str, Any]]:
    """Every consumer's March invoice, from the function behind ``/v1/invoices`` (the
    unattributed consumer ``""`` has no route of its own)."""
    pricing = load_store_pricing(store, config_path)
    views = get_invoices(store, pricing, month("2026-03"), scope=Scope.ALL)
    return {c: v.invoice.to_dict() for c, v in views.items()}


def test_only_unpriced_usage_is_exported_csv_and_json(client: TestClient) -> None:
    """The issue's case: the invoice lists the unknown model, and so does the export."""
    invoice = client.get("/v1/invoices/solo", params={"period": "2026-03"}).json()
    assert (invoice["lines"], invoice["total"]) == ([], "0.00")
    assert invoice["unpriced"][0]["model"] == "mystery-2"
    head = {"consumer": "solo", "period": "2026-03", "currency": "USD", "provider": "openai",
            "model": "mystery-2"}  # fmt: skip
    expected = [("input", 600), ("cache_read", 400), ("output", 200), ("reasoning", 100)]

    response = client.get("/v1/export", params={"period": "2026-03", "format": "csv"})
    assert response.status_code == 200
    rows = by_consumer(csv_rows(response.text))["solo"]
    assert rows == [head | {"token_type": t, "quantity": str(q), "unit_price_per_million": "",
                            "amount": "", "status": "unpriced"} for t, q in expected]  # fmt: skip

    body = client.get("/v1/export", params={"period": "2026-03", "format": "json"}).json()
    assert body["columns"] == COLUMNS
    rows = by_consumer(body["rows"])["solo"]
    assert rows == [head | {"token_type": t, "quantity": q, "unit_price_per_million": None,
                            "amount": None, "status": "unpriced"} for t, q in expected]  # fmt: skip


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_equals_every_invoice(client: TestClient, store: Store, tmp_path, fmt: str) -> None:
    response = client.get("/v1/export", params={"period": "2026-03", "format": fmt})
    rows = csv_rows(response.text) if fmt == "csv" else response.json()["rows"]
    exported = by_consumer(rows)
    invoices = march_invoices(store, tmp_path / "meterline.yaml")
    # every consumer with an invoice has rows (gamma: failed calls only; solo, empty:
    # unpriced only; "": unattributed)
    assert (
        set(exported)
        == set(invoices)
        == {"", "acme", "beta", "delta", "empty", "gamma", "partial", "solo", "split"}
    )
    for consumer, invoice in invoices.items():
        assert_matches(exported[consumer], invoice, "" if fmt == "csv" else None)
    for consumer in ("acme", "beta", "split"):  # the API's invoices are the same documents
        api = client.get(f"/v1/invoices/{consumer}", params={"period": "2026-03"}).json()
        assert api == {**invoices[consumer], "known": True}


def test_statuses_of_the_class(client: TestClient) -> None:
    rows = by_consumer(client.get("/v1/export", params={"period": "2026-03",
                                                        "format": "json"}).json()["rows"])  # fmt: skip

    def cells(consumer: str) -> list[tuple[Any, ...]]:
        return [(r["status"], r["model"], r["token_type"], r["quantity"], r["amount"])
                for r in rows[consumer]]  # fmt: skip

    # priced in one segment, unpriced in the other
    assert cells("split") == [
        ("priced", "late-1", "input", 1_000_000, "1.00"),
        ("priced", "late-1", "output", 1_000_000, "2.00"),
        ("unpriced", "late-1", "input", 1_000, None),
        ("unpriced", "late-1", "output", 10, None),
    ]
    # a token type without a price makes the usage unpriced, not $0 for those tokens
    assert cells("partial") == [
        ("unpriced", "input-only", "input", 5_000_000, None),
        ("unpriced", "input-only", "output", 7, None),
    ]
    # a call without tokens still shows (as 0 input and 0 output tokens, no amount)
    assert cells("empty") == [("unpriced", "mystery-3", "input", 0, None),
                              ("unpriced", "mystery-3", "output", 0, None)]  # fmt: skip
    # failed calls the plan does not bill: listed as failed, whether priced or not …
    assert cells("gamma") == [("failed", "gpt-4o", "input", 100_000, None),
                              ("failed", "gpt-4o", "output", 0, None)]  # fmt: skip
    assert cells("delta") == [("failed", "mystery-3", "input", 70, None),
                              ("failed", "mystery-3", "output", 30, None)]  # fmt: skip
    # … billed by beta's plan: priced, or unpriced when the model has no price
    assert cells("beta") == [
        ("priced", "gpt-4o", "input", 100_000, "0.25"),
        ("priced", "gpt-4o", "output", 10_000, "0.10"),
        ("unpriced", "mystery-3", "input", 7, None),
        ("unpriced", "mystery-3", "output", 3, None),
    ]
    # acme: lines, the plan's 20 % markup as its own row, the unknown model, the failed call
    acme = cells("acme")
    assert acme[16:] == [
        ("markup", None, None, None, "1.54"),
        ("unpriced", "mystery-1", "input", 100, None),
        ("unpriced", "mystery-1", "output", 100, None),
        ("failed", "gpt-4o", "input", 1_000, None),
        ("failed", "gpt-4o", "output", 0, None),
    ]
    assert sum(Decimal(a) for *_, a in acme if a is not None) == Decimal("9.23")  # the total
    # unattributed usage is exported under ""
    assert cells("") == [("priced", "gpt-4o", "input", 1_000_000, "2.50"),
                         ("unpriced", "mystery-2", "input", 10, None),
                         ("unpriced", "mystery-2", "output", 5, None)]  # fmt: skip


def test_range_export_has_unpriced_rows(client: TestClient) -> None:
    window = {"from": "2026-03-19T00:00:00Z", "to": "2026-03-20T00:00:00Z", "format": "json"}
    rows = client.get("/v1/export", params=window).json()["rows"]
    assert [(r["consumer"], r["status"], r["token_type"], r["quantity"]) for r in rows] == [
        ("split", "unpriced", "input", 1_000), ("split", "unpriced", "output", 10)]  # fmt: skip
    assert rows[0]["period"] == "2026-03-19T00:00:00Z/2026-03-20T00:00:00Z"


def test_finalised_export_keeps_unbilled_usage_and_adjustments(
    client: TestClient, store: Store, tmp_path
) -> None:
    open_rows = client.get("/v1/export", params={"period": "2026-03", "format": "json"}).json()
    assert client.post("/v1/periods/2026-03/finalize").status_code == 200
    final = client.get("/v1/export", params={"period": "2026-03", "format": "json"}).json()
    assert final == open_rows  # the stored invoices export the same rows
    # a price change, recorded by reprice as an adjustment: the export shows it
    cheaper = EXPORT_CONFIG.replace('input: "2.50"', 'input: "1.50"')
    client.app.state.settings = ServerSettings(config=write_config(tmp_path, cheaper),
                                               admin_key="k")  # fmt: skip
    assert reload_config(client.app)
    assert client.post("/v1/periods/2026-03/reprice").json()["action"] == "adjusted"
    rows = by_consumer(csv_rows(client.get("/v1/export", params={"period": "2026-03"}).text))
    adjustments = {c: [r["amount"] for r in rs if r["status"] == "adjustment"]
                   for c, rs in rows.items()}  # fmt: skip
    assert adjustments["acme"] == ["-1.21"]
    assert adjustments[""] == ["-1.00"]  # 1,000,000 tokens × 1.00 less, no markup
    assert adjustments["solo"] == []
    assert [r["status"] for r in rows["solo"]] == ["unpriced"] * 4


def test_invoice_stored_before_quantities_were_kept() -> None:
    """A finalised invoice of an earlier version lists unpriced usage without its token
    types: the export shows its gross counts under their own names, never as ``input``."""
    legacy = {"consumer": "old", "period": "2026-01", "currency": "USD", "lines": [],
              "subtotal": "0.00", "markup": "0.00", "total": "0.00", "failed_requests": 0,
              "unpriced": [{"provider": "openai", "model": "mystery-1", "requests": 2,
                            "input_tokens": 500, "output_tokens": 40}]}  # fmt: skip
    rows = export_rows(legacy)
    assert [(r["token_type"], r["quantity"], r["amount"], r["status"]) for r in rows] == [
        ("input_total", 500, None, "unpriced"), ("output_total", 40, None, "unpriced")]  # fmt: skip


# --- the CLI ---------------------------------------------------------------------


def test_cli_export_local_and_remote(store: Store, tmp_path, monkeypatch) -> None:
    from tests.aggregator.test_invoices_cli import invoke, serve

    insert_calls(store, EXPORT_CALLS)
    config = write_config(tmp_path, EXPORT_CONFIG)
    invoices = march_invoices(store, config)
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    local = ["--data-dir", store.data_dir, "--database", store.database, "--config", str(config)]
    outputs = {
        "local csv": invoke("export", "--period", "2026-03", *local),
        "local json": invoke("export", "--period", "2026-03", "--format", "json", *local),
    }
    table = invoke("export", "--period", "2026-03", "--format", "table", *local)
    assert "solo" in table and "unpriced" in table
    with serve(store, config, monkeypatch):
        outputs["remote csv"] = invoke("export", "--period", "2026-03")
        outputs["remote json"] = invoke("export", "--period", "2026-03", "--format", "json")
    for name, text in outputs.items():
        rows = csv_rows(text) if name.endswith("csv") else json.loads(text)
        exported = by_consumer(rows)
        assert set(exported) == set(invoices), name
        for consumer, invoice in invoices.items():
            assert_matches(exported[consumer], invoice, "" if name.endswith("csv") else None)


def test_cli_invoice_csv_has_the_unbilled_rows(store: Store, tmp_path, monkeypatch) -> None:
    from tests.aggregator.test_invoices_cli import invoke

    insert_calls(store, EXPORT_CALLS)
    config = write_config(tmp_path, EXPORT_CONFIG)
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    local = ["--data-dir", store.data_dir, "--database", store.database, "--config", str(config)]
    rows = csv_rows(invoke("invoice", "solo", "--period", "2026-03", "--format", "csv", *local))
    assert [(r["token_type"], r["quantity"], r["amount"], r["status"]) for r in rows] == [
        ("input", "600", "", "unpriced"), ("cache_read", "400", "", "unpriced"),
        ("output", "200", "", "unpriced"), ("reasoning", "100", "", "unpriced")]  # fmt: skip
    text = invoke("invoice", "gamma", "--period", "2026-03", *local)
    assert "Failed calls not billed" in text and "100000" in text
