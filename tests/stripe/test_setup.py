"""``meterline stripe setup``: creates the meters Stripe lacks, and fails in one line."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meterline.cli import app
from meterline.store import Store
from meterline.stripe_standin import StandinConfig, StandinServer
from tests.stripe._support import CUSTOMERS, METERS, write_config

runner = CliRunner()


@pytest.fixture
def fake() -> Iterator[StandinServer]:
    server = StandinServer(StandinConfig(customers=CUSTOMERS)).start()  # no meters yet
    try:
        yield server
    finally:
        server.stop()


def _setup(store: Store, config: Path, key: str, base: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    monkeypatch.setenv("STRIPE_API_KEY", key)
    monkeypatch.setenv("METERLINE_STRIPE_API_BASE", base)
    return runner.invoke(app, ["stripe", "setup", "--data-dir", str(store.data_dir),
                               "--database", store.database, "--config", str(config)])  # fmt: skip


def test_setup_creates_the_missing_meters_once(
    store: Store, tmp_path: Path, fake: StandinServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    base = fake.base_addresses["api"]
    first = _setup(store, config, fake.api_key, base, monkeypatch)
    assert first.exit_code == 0, first.output
    assert sorted(m["event_name"] for m in fake.state.meters.values()) == sorted(METERS)
    again = _setup(store, config, fake.api_key, base, monkeypatch)
    assert again.exit_code == 0 and again.stdout.count("exists") == len(METERS)
    assert len(fake.state.meters) == len(METERS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("case", ["bad key", "unreachable"])
def test_setup_fails_in_one_line_without_a_traceback(
    case: str, store: Store, tmp_path: Path, fake: StandinServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    if case == "bad key":
        key, base, expected = "sk_test_wrong", fake.base_addresses["api"], "Stripe refused the key"
    else:
        key, base = fake.api_key, f"http://127.0.0.1:{_free_port()}"
        expected = "listing Stripe's meters at"
    result = _setup(store, config, key, base, monkeypatch)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and expected in line, result.stderr
    assert fake.state.meters == {}
