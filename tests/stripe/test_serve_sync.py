"""``stripe.sync_interval`` inside ``meterline serve``: the server syncs closed windows to
the Stripe stand-in by itself, stops cleanly on SIGTERM (also with a request stalled in
flight), and a restart sends nothing twice (Stripe's totals equal the invoices)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import pytest

from meterline.launcher import RunningServer, start_server
from meterline.stripe_standin import StandinServer
from tests.stripe._support import standin, write_config
from tests.stripe.test_kill import _child, _env

pytestmark = pytest.mark.e2e

EVENTS = 72  # _sync_child's seed: 12 closed hours × 2 consumers × 3 meters


def _config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    path.write_text(path.read_text() + "  sync_interval: 10s\n", encoding="utf-8")
    return path


def _serve(data_dir: Path, config: Path, fake: StandinServer) -> RunningServer:
    env = {k: v for k, v in _env(fake).items() if k.startswith(("STRIPE", "METERLINE_STRIPE"))}
    return start_server(data_dir, args=["--config", str(config)], env=env)


def _wait(condition, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _assert_totals_equal_invoices(fake: StandinServer, data_dir: Path, config: Path) -> None:
    expected = json.loads(_child(data_dir, config, "expected").strip().splitlines()[-1])
    totals = fake.state.totals()
    windows: dict[str, set[int]] = {}
    for e in fake.state.meter_events:
        windows.setdefault(e.payload["stripe_customer_id"], set()).add(e.timestamp)
    for key, value in expected.items():
        customer, meter = key.split("|")
        if meter == "rounding":
            continue
        if meter == "llm_cost":
            sent = Decimal(totals[(customer, meter)]) * Decimal("0.000001")
            tolerance = len(windows[customer]) * Decimal("0.0000005")
            tolerance += Decimal(expected[f"{customer}|rounding"])
            assert abs(sent - Decimal(value)) <= tolerance, (key, sent, value)
        else:
            assert totals[(customer, meter)] == int(value), key


def test_serve_syncs_by_itself_stops_on_sigterm_and_restart_sends_nothing_twice(
    tmp_path: Path,
) -> None:
    fake = standin()
    try:
        config = _config(tmp_path)
        data_dir = tmp_path / "data"
        _child(data_dir, config, "seed")
        server = _serve(data_dir, config, fake)
        try:
            _wait(lambda: len(fake.state.meter_events) == EVENTS)
            _wait(lambda: "stripe sync: sent 72" in server.log() or "sent 72" in server.log())
        finally:
            started = time.monotonic()
            code = server.stop()
        assert code == 0, server.log()
        assert time.monotonic() - started < 15, server.log()
        assert "stripe sync every 0:00:10" in server.log()
        _assert_totals_equal_invoices(fake, data_dir, config)
        again = _serve(data_dir, config, fake)
        try:  # the restart runs at once; it finds everything accepted in the ledger
            _wait(lambda: "sent 0" in again.log())
        finally:
            assert again.stop() == 0, again.log()
        assert len(fake.state.meter_events) == EVENTS
    finally:
        fake.stop()


def test_sigterm_with_a_request_stalled_in_flight_exits_and_the_next_serve_settles_it(
    tmp_path: Path,
) -> None:
    fake = standin()
    try:
        config = _config(tmp_path)
        data_dir = tmp_path / "data"
        _child(data_dir, config, "seed")
        # Stripe applies a request, then its answer is held back past the shutdown bound.
        fake.state.faults.inject("stall_after", path="/v1/billing/meter_events", delay=90)
        server = _serve(data_dir, config, fake)
        try:
            _wait(lambda: any(f[0] == "stall_after" for f in fake.state.faults.fired))
        finally:
            started = time.monotonic()
            code = server.stop()
        assert code == 0, server.log()
        assert time.monotonic() - started < 60, server.log()
        assert len(fake.state.meter_events) < EVENTS  # the run was cut short
        fake.state.faults.clear()
        again = _serve(data_dir, config, fake)
        try:
            _wait(lambda: len(fake.state.meter_events) == EVENTS)
            _wait(lambda: "sent " in again.log())
        finally:
            assert again.stop() == 0, again.log()
        _assert_totals_equal_invoices(fake, data_dir, config)
    finally:
        fake.stop()
