"""Parameters the engine cannot represent are a clear 422 (API) or usage error (CLI), never
a 500 (issue 8 §4): times outside ``DateTime64(9)``, months outside it, times that are not
ISO 8601, offsets that leave the range; and every odd but representable value still works.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from meterline.aggregator.app import create_app
from meterline.cli import app
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator._calls import insert_calls
from tests.aggregator.pricing_config import write_config
from tests.aggregator.test_invoices import CALLS

OUTSIDE = (
    "is outside the times meterline can store (1900-01-01T00:00:00Z to 2262-04-11T23:47:16.854775Z)"
)
MONTHS = "is outside the months meterline can store (1900-01 to 2262-03)"
NOT_ISO = "is not an ISO 8601 time such as 2026-03-01T00:00:00Z"


@pytest.fixture
def client(store: Store, tmp_path) -> TestClient:
    insert_calls(store, CALLS)
    c = TestClient(create_app(ServerSettings(config=write_config(tmp_path)), store),
                   raise_server_exceptions=False)  # fmt: skip
    c.headers["content-type"] = "application/json"  # the open API refuses forgeable POSTs
    return c


RANGE = {"to": "2026-04-01T00:00:00Z"}
BAD = [
    # times DateTime64(9) cannot hold, on every route that takes one
    ("GET", "/v1/usage", {"from": "1600-01-01T00:00:00Z"}, f"'from' 1600-01-01T00:00:00Z {OUTSIDE}"),
    ("GET", "/v1/usage", {"from": "1899-12-31T23:59:59Z"}, OUTSIDE),
    ("GET", "/v1/usage", {"to": "2262-04-11T23:47:17Z"}, f"'to' 2262-04-11T23:47:17Z {OUTSIDE}"),
    ("GET", "/v1/usage", {"to": "2300-01-01T00:00:00Z"}, OUTSIDE),
    ("GET", "/v1/usage", {"to": "9999-12-31T23:59:59.999999Z"}, OUTSIDE),
    # offsets that move a time out of range (or out of Python's)
    ("GET", "/v1/usage", {"from": "1900-01-01T00:30:00+01:00"}, OUTSIDE),
    ("GET", "/v1/usage", {"from": "0001-01-01T00:00:00+01:00"}, OUTSIDE),
    ("GET", "/v1/usage", {"to": "9999-12-31T23:59:59-01:00"}, OUTSIDE),
    ("GET", "/v1/usage", {"from": "2026-03-01T00:00:00+24:00"}, NOT_ISO),
    # numbers are not times (pydantic would read them as seconds since 1970) …
    ("GET", "/v1/usage", {"from": "1234567890"}, f"'from' '1234567890' {NOT_ISO}"),
    ("GET", "/v1/usage", {"from": "-1"}, NOT_ISO),
    ("GET", "/v1/usage", {"from": "1e300"}, NOT_ISO),
    ("GET", "/v1/usage", {"from": "2026-03-01\x00"}, NOT_ISO),
    # … and a nanosecond bound is not silently cut to microseconds
    ("GET", "/v1/usage", {"from": "2026-03-01T00:00:00.000000001Z"}, "finer than a microsecond"),
    ("GET", "/v1/invoices/acme", {"from": "1600-01-01", **RANGE}, f"'from' 1600-01-01 {OUTSIDE}"),
    ("GET", "/v1/invoices/acme", {"from": "2026-03-01", "to": "2263-01-01"}, OUTSIDE),
    ("GET", "/v1/export", {"from": "0001-01-01T00:00:00+01:00", **RANGE}, OUTSIDE),
    ("GET", "/v1/export", {"from": "2026-03-01", "to": "99999"}, NOT_ISO),
    ("GET", "/v1/prices", {"at": "1600-01-01T00:00:00Z"}, f"'at' 1600-01-01T00:00:00Z {OUTSIDE}"),
    ("GET", "/v1/prices", {"at": "0001-01-01T00:00:00+01:00"}, OUTSIDE),
    # months outside the range, or not months
    ("GET", "/v1/invoices/acme", {"period": "1600-01"}, f"period 1600-01 {MONTHS}"),
    ("GET", "/v1/invoices/acme", {"period": "0000-01"}, MONTHS),
    ("GET", "/v1/invoices/acme", {"period": "2262-04"}, MONTHS),  # ends past 2262-04-11
    ("GET", "/v1/invoices/acme", {"period": "9999-12"}, MONTHS),
    ("GET", "/v1/invoices/acme", {"period": "0000-13"}, "not a month in the form YYYY-MM"),
    ("GET", "/v1/invoices/acme", {"period": "２０２６-03"}, "not a month in the form YYYY-MM"),
    ("GET", "/v1/invoices/acme", {"period": "2026-03\x00"}, "not a month in the form YYYY-MM"),
    ("GET", "/v1/export", {"period": "1600-01"}, MONTHS),
    ("GET", "/v1/export", {"period": "2299-12"}, MONTHS),
    ("GET", "/v1/periods/1600-01", {}, MONTHS),
    ("POST", "/v1/periods/1600-01/finalize", {}, MONTHS),
    ("POST", "/v1/periods/2299-12/finalize", {}, MONTHS),
    ("POST", "/v1/periods/0000-01/reprice", {}, MONTHS),
    ("GET", "/v1/periods/２０２６-03", {}, "not a month in the form YYYY-MM"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "params", "message"), BAD)
def test_unrepresentable_parameters_are_422(
    client: TestClient, store: Store, method: str, path: str, params: dict, message: str
) -> None:
    response = client.request(method, path, params=params)
    assert response.status_code == 422, response.text
    assert message in response.text
    _, [(periods,)] = store.query("SELECT count() FROM {db}.billing_periods")
    assert periods == 0  # nothing finalised by a rejected request


def test_edges_of_the_range_and_odd_strings_work(client: TestClient) -> None:
    everything = client.get("/v1/usage").json()["rows"]
    assert everything[0]["requests"] == 12
    edges = {"from": "1900-01-01T00:00:00Z", "to": "2262-04-11T23:47:16.854775Z"}
    assert client.get("/v1/usage", params=edges).json()["rows"] == everything
    for period in ("1900-01", "2262-03"):
        body = client.get("/v1/invoices/acme", params={"period": period}).json()
        assert (body["period"], body["total"]) == (period, "0.00")
        assert client.get("/v1/export", params={"period": period}).status_code == 200
    assert client.get("/v1/periods/2262-03").json() == {"period": "2262-03", "status": "open"}
    assert client.get("/v1/periods/ 2026-03 ").json()["period"] == "2026-03"
    assert client.get("/v1/prices", params={"at": "2262-04-11T23:47:16Z"}).status_code == 200
    # an offset names the same instant as its UTC time; the label is in UTC
    utc = client.get("/v1/invoices/acme", params={"from": "2026-03-16T00:00:00Z",
                                                  "to": "2026-03-17T00:00:00Z"}).json()  # fmt: skip
    shifted = client.get("/v1/invoices/acme", params={"from": "2026-03-16T01:00:00+01:00",
                                                      "to": "2026-03-16T14:00:00-10:00"}).json()  # fmt: skip
    assert shifted == utc and utc["total"] == "3.36"
    basic = client.get("/v1/invoices/acme", params={"from": "20260316", "to": "20260317"})
    assert basic.json() == utc  # ISO 8601 basic format: a date, not seconds since 1970
    at = client.get("/v1/prices", params={"at": "2026-03-16T00:30:00+01:00"}).json()["at"]
    assert at == "2026-03-15T23:30:00Z"
    # strings the engine holds as they are: NUL bytes, very long, invalid UTF-8 (replaced)
    for query in ("a%00b", "x" * 30_000, "%FF", "%ED%A0%80"):
        rows = client.get(f"/v1/usage?consumer={query}&model={query}")
        assert (rows.status_code, rows.json()) == (200, {"rows": []})
    for path in ("/v1/invoices/a%00b", "/v1/invoices/%FF", "/v1/invoices/" + "x" * 60_000):
        response = client.get(path, params={"period": "2026-03"})
        assert response.status_code == 200 and response.json()["lines"] == []
    response = client.get("/v1/prices", params={"provider": "openai", "model": "a\x00" * 10_000})
    assert (response.status_code, response.json()["prices"]) == (200, [])


# --- the CLI ---------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def local(store: Store, tmp_path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    insert_calls(store, CALLS)
    return ["--data-dir", store.data_dir, "--database", store.database,
            "--config", str(write_config(tmp_path))]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["export", "--from", "1600-01-01", "--to", "2026-01-01"], 2,
         f"Invalid value for '--from': 1600-01-01 {OUTSIDE}"),
        (["export", "--from", "2026-01-01", "--to", "2262-04-11T23:47:17Z"], 2, OUTSIDE),
        (["invoice", "acme", "--from", "0001-01-01T00:00:00+01:00", "--to", "2026-01-01"], 2,
         OUTSIDE),
        (["invoice", "acme", "--from", "1234567890", "--to", "2026-01-01"], 2, NOT_ISO),
        (["prices", "show", "--at", "9999-12-31T23:59:59-01:00"], 2, OUTSIDE),
        (["invoice", "acme", "--period", "1600-01"], 1, f"period 1600-01 {MONTHS}"),
        (["export", "--period", "2299-12"], 1, MONTHS),
        (["finalize", "--period", "0000-01"], 1, MONTHS),
        (["reprice", "--period", "2262-04"], 1, MONTHS),
    ],
)  # fmt: skip
def test_cli_rejects_unrepresentable_times(
    local: list[str], args: list[str], code: int, message: str
) -> None:
    result = runner.invoke(app, [*args, *local], terminal_width=400)
    assert result.exit_code == code, result.output
    assert message in " ".join(result.output.replace("│", " ").split())
    assert "Traceback" not in result.output


def test_cli_takes_offsets_locally_and_remotely(
    local: list[str], store: Store, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from tests.aggregator.test_invoices_cli import invoke, serve

    window = ["--from", "2026-03-16T01:00:00+01:00", "--to", "2026-03-17T00:00:00Z"]
    body = json.loads(invoke("invoice", "acme", *window, "--format", "json", *local))
    assert (body["period"], body["total"]) == ("2026-03-16T00:00:00Z/2026-03-17T00:00:00Z", "3.36")
    with serve(store, write_config(tmp_path), monkeypatch):
        assert json.loads(invoke("invoice", "acme", *window, "--format", "json")) == body
        result = runner.invoke(app, ["invoice", "acme", "--period", "1600-01"])
        assert result.exit_code == 1
        assert f"422 period 1600-01 {MONTHS}" in result.output


@pytest.mark.parametrize("when", ["2300-01-01", "1600-01-01", "1900-01-01T00:30:00+01:00"])
def test_price_dates_outside_the_range_are_a_config_error(
    store: Store, tmp_path, when: str
) -> None:
    """A price's ``effective_from`` is a bound of the rating query: outside the range it
    failed every ``/v1/usage`` with a bare 500; now the file is refused, saying where."""
    from meterline.aggregator.pricing import PricingConfigError, parse_pricing_config

    entry = {"provider": "openai", "model": "gpt-4o", "effective_from": when,
             "per_million_tokens": {"input": "9.00"}}  # fmt: skip
    with pytest.raises(
        PricingConfigError, match=rf"models\[0\].effective_from: .* {re.escape(OUTSIDE)}"
    ):
        parse_pricing_config({"models": [entry]})
    text = f'models:\n  - {{provider: openai, model: gpt-4o, effective_from: "{when}",\n'
    text += '     per_million_tokens: {input: "9.00"}}\n'
    # the app refuses the file before it serves (it once answered 500 on every route)
    with pytest.raises(PricingConfigError, match=r"meterline.yaml:2: models\[0\].effective_from"):
        create_app(ServerSettings(config=write_config(tmp_path, text)), store)
