"""The CLI: ``invoice``, ``export``, ``prices``, ``finalize``, ``reprice`` on the local
store (same engine directory, the test's database) and against a running server."""

from __future__ import annotations

import csv
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meterline.cli import app
from meterline.store import Store
from tests.aggregator._calls import insert_calls
from tests.aggregator.pricing_config import write_config
from tests.aggregator.test_invoices import ACME_MARCH, CALLS

runner = CliRunner()


@pytest.fixture
def local(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    insert_calls(store, CALLS)
    return ["--data-dir", store.data_dir, "--database", store.database,
            "--config", str(write_config(tmp_path))]  # fmt: skip


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_invoice_table_json_csv(local: list[str]) -> None:
    text = invoke("invoice", "acme", "--period", "2026-03", *local)
    assert "Invoice acme  2026-03  USD" in text
    assert "claude-sonnet-4-20250514  cache_write_1h      4000" in text
    assert "total  9.23  USD" in text
    assert "mystery-1" in text and "Failed requests: 1" in text
    assert json.loads(invoke("invoice", "acme", "--period", "2026-03", "--format", "json",
                             *local)) == ACME_MARCH  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(
        invoke("invoice", "acme", "--period", "2026-03", "--format", "csv", *local))))  # fmt: skip
    assert [r["status"] for r in rows] == ["priced"] * len(ACME_MARCH["lines"]) + [
        "markup", "unpriced", "unpriced", "failed", "failed"]  # fmt: skip
    assert {r["consumer"] for r in rows} == {"acme"}


def test_export_and_errors(local: list[str]) -> None:
    rows = list(csv.DictReader(io.StringIO(invoke("export", "--period", "2026-03", *local))))
    assert {r["consumer"] for r in rows} == {"acme", "beta", "gamma"}
    assert "token_type" in invoke("export", "--period", "2026-03", "--format", "table", *local)
    bad = runner.invoke(app, ["invoice", "acme", "--period", "March", *local])
    assert bad.exit_code == 1
    assert "period 'March' is not a month in the form YYYY-MM" in bad.output
    bad = runner.invoke(app, ["reprice", "--period", "2026-03", *local])
    assert bad.exit_code == 1 and "is not finalised" in bad.output


def test_prices_show_and_update_offline(local: list[str]) -> None:
    text = invoke("prices", "show", "--source", "config", *local)
    assert "Prices per million tokens, USD" in text and "match:^claude-sonnet-4" in text
    assert ">200000: input 6.00, output 22.50" in text
    one = json.loads(invoke("prices", "show", "--provider", "anthropic", "--model",
                            "claude-opus-4-20250514", "--format", "json", *local))  # fmt: skip
    assert one["prices"][0]["matched"] == "anthropic/claude-opus-4-0"
    # the published-prices host is unreachable here: a clear error, nothing changed
    config = Path(local[-1])
    config.write_text(config.read_text() + "catalogue: {url: 'http://127.0.0.1:9/data.json'}\n")
    result = runner.invoke(app, ["prices", "update", *local])
    assert result.exit_code == 1
    assert "cannot fetch prices from http://127.0.0.1:9/data.json" in result.output
    assert "prices unchanged (genai-prices" in result.output
    named = runner.invoke(app, ["prices", "update", "--url", "http://127.0.0.1:9/", *local])
    assert named.exit_code == 2 and "No such option: --url" in named.output


def test_finalize_and_reprice(local: list[str], tmp_path: Path) -> None:
    assert "Finalised 2026-03 (revision 1): 3 invoice(s)" in invoke(
        "finalize", "--period", "2026-03", *local)  # fmt: skip
    text = invoke("reprice", "--period", "2026-03", *local)
    assert "Repriced 2026-03 (USD): 0 changed; nothing recorded" in text
    cheaper = write_config(tmp_path, (tmp_path / "meterline.yaml").read_text().replace(
        'input: "2.50"', 'input: "1.50"'))  # fmt: skip
    local = [*local[:-1], str(cheaper)]
    text = invoke("reprice", "--period", "2026-03", *local)
    assert "2 changed; differences recorded as adjustments" in text
    assert "acme        9.23      8.02       -1.21" in text
    text = invoke("reprice", "--period", "2026-03", "--force", "--format", "json", *local)
    assert json.loads(text)["revision"] == 2


@contextmanager
def serve(store: Store, config: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A running server (uvicorn, loopback) over ``store``; the CLI is pointed at it."""
    import uvicorn

    from meterline.aggregator.app import create_app
    from meterline.settings import ServerSettings

    settings = ServerSettings(config=config, admin_key="secret")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(settings, store), host="127.0.0.1", port=port,
                            log_level="warning")  # fmt: skip
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    monkeypatch.setenv("METERLINE_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("METERLINE_API_KEY", "secret")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
        monkeypatch.delenv("METERLINE_API_URL")


@pytest.fixture
def server(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    insert_calls(store, CALLS)
    with serve(store, write_config(tmp_path), monkeypatch) as url:
        yield url


def test_commands_talk_to_a_running_server(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert json.loads(invoke("invoice", "acme", "--period", "2026-03", "--format", "json")) == (
        ACME_MARCH)  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(invoke("export", "--period", "2026-03"))))
    assert {r["consumer"] for r in rows} == {"acme", "beta", "gamma"}
    assert "match:^claude-sonnet-4" in invoke("prices", "show", "--source", "config")
    assert "revision 1" in invoke("finalize", "--period", "2026-03")
    assert "0 changed" in invoke("reprice", "--period", "2026-03", "--dry-run")
    monkeypatch.setenv("METERLINE_API_KEY", "wrong")
    result = runner.invoke(app, ["invoice", "acme", "--period", "2026-03"])
    assert result.exit_code == 1 and "401 invalid API key" in result.output
