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
    return result.stdout


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


# --- which store a command opens ---------------------------------------------------


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory without a store, no server, no store variables."""
    for name in ("METERLINE_API_URL", "METERLINE_DATA_DIR", "METERLINE_CLICKHOUSE_URL",
                 "METERLINE_DATABASE", "METERLINE_CONFIG"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "command",
    [
        ["invoice", "acme", "--period", "2026-03"],
        ["invoice", "acme", "--period", "2026-03", "--format", "json"],
        ["export", "--period", "2026-03"],
        ["prices", "show"],
        ["finalize", "--period", "2026-03"],
        ["reprice", "--period", "2026-03", "--dry-run"],
        ["prices", "update"],
    ],
)
def test_no_store_named_creates_nothing(nowhere: Path, command: list[str]) -> None:
    result = runner.invoke(app, command)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert "meterline-data (default) does not exist" in lines[0]
    assert "--data-dir" in lines[0] and "METERLINE_API_URL" in lines[0]
    assert result.stdout == ""
    assert not (nowhere / "meterline-data").exists()


def test_a_named_store_that_does_not_exist(nowhere: Path, monkeypatch) -> None:
    result = runner.invoke(app, ["invoice", "acme", "--period", "2026-03", "--data-dir", "typo"])
    assert result.exit_code == 1
    assert f"{nowhere / 'typo'} (--data-dir) does not exist" in result.stderr
    assert not (nowhere / "typo").exists()
    (nowhere / "notes").mkdir()
    monkeypatch.setenv("METERLINE_DATA_DIR", str(nowhere / "notes"))
    result = runner.invoke(app, ["export", "--period", "2026-03"])
    assert result.exit_code == 1
    assert "notes (METERLINE_DATA_DIR) is not a meterline store" in result.stderr
    assert list((nowhere / "notes").iterdir()) == []  # the engine never opened it


def test_a_store_without_the_database(store: Store, nowhere: Path) -> None:
    result = runner.invoke(app, ["invoice", "acme", "--period", "2026-03", "--data-dir",
                                 store.data_dir, "--database", "no_such_db"])  # fmt: skip
    assert result.exit_code == 1
    assert "has no database 'no_such_db': check --database" in result.stderr
    _, found = store.query("SELECT 1 FROM system.databases WHERE name = 'no_such_db'")
    assert found == []


def test_says_which_store_it_opened(local: list[str]) -> None:
    result = runner.invoke(app, ["invoice", "acme", "--period", "2026-03", *local])
    assert result.exit_code == 0
    database = local[local.index("--database") + 1]
    assert result.stderr == (
        f"meterline: using the embedded store {local[1]}, database {database} (--data-dir)\n"
    )
    assert result.stdout.startswith("Invoice acme")


def test_prices_update_may_create_a_named_store(nowhere: Path) -> None:
    """Only a command that writes creates a store, and only one it was told to (a real
    process: the test process's engine has its own directory)."""
    import os
    import subprocess
    import sys

    config = nowhere / "m.yaml"
    config.write_text("catalogue: {url: 'http://127.0.0.1:9/data.json'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
    run = subprocess.run(
        [sys.executable, "-m", "meterline", "prices", "update", "--data-dir", "new",
         "--config", str(config)],
        cwd=nowhere, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1  # the host is unreachable here
    lines = run.stderr.splitlines()  # between them: the new store's migrations (INFO)
    assert lines[0] == (
        f"meterline: using the embedded store {nowhere / 'new'}, database meterline (--data-dir)"
    )
    assert lines[-1].startswith("error: cannot fetch prices from http://127.0.0.1:9/data.json")
    assert (nowhere / "new" / "metadata").is_dir()
