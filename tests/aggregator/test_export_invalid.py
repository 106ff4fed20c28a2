"""Invalid usage (docs/counting.md) is in the billing export: its own rows, never billed."""

from __future__ import annotations

from fastapi.testclient import TestClient

from meterline.aggregator.app import create_app
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator._calls import Call, insert_calls, utc


def test_invalid_usage_is_exported_and_not_billed(store: Store) -> None:
    insert_calls(store, [
        Call(utc(2026, 3, 2), consumer="acme", model="gpt-4o", input=1000, output=10),
        # reasoning above output: flagged by the store
        Call(utc(2026, 3, 2), consumer="acme", model="gpt-4o", input=10, output=1, reasoning=5),
        # a consumer whose only usage is invalid still has rows
        Call(utc(2026, 3, 3), consumer="bad", model="gpt-4o", input=5, cache_read=9),
    ])  # fmt: skip
    client = TestClient(create_app(ServerSettings(admin_key="k"), store))
    client.headers["authorization"] = "Bearer k"
    rows = client.get("/v1/export", params={"period": "2026-03", "format": "json"}).json()["rows"]
    invalid = [(r["consumer"], r["model"], r["token_type"], r["quantity"], r["amount"])
               for r in rows if r["status"] == "invalid"]  # fmt: skip
    assert invalid == [
        ("acme", "gpt-4o", "requests", 1, None),
        ("bad", "gpt-4o", "requests", 1, None),
    ]
    priced = {r["token_type"]: r["quantity"] for r in rows if r["status"] == "priced"}
    assert priced == {"input": 1000, "output": 10}  # the invalid calls' tokens are not billed
    csv = client.get("/v1/export", params={"period": "2026-03", "format": "csv"}).text
    assert "bad,2026-03,USD,openai,gpt-4o,requests,1,,,invalid" in csv
