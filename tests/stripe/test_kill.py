"""Exactly once under a real kill: ``meterline stripe sync`` is killed with SIGKILL before
a send, after the stand-in applied a request but before its answer, and mid-run; run
again, Stripe's totals per customer and meter equal meterline's invoices (tokens
exactly, cost within one rounding per window), and a further run sends nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from meterline.stripe_standin import StandinServer
from tests.stripe._support import standin, write_config

ROOT = Path(__file__).resolve().parents[2]


def _child(data_dir: Path, config: Path, command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.stripe._sync_child", str(data_dir), str(config), command],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT,
    )  # fmt: skip
    return done.stdout


def _env(fake: StandinServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
    env.update(
        STRIPE_API_KEY=fake.api_key,
        METERLINE_STRIPE_API_BASE=fake.base_addresses["api"],
        METERLINE_STRIPE_METER_EVENTS_BASE=fake.base_addresses["meter_events"],
    )
    return env


def _sync(data_dir: Path, config: Path, fake: StandinServer, api: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "meterline", "stripe", "sync", "--data-dir", str(data_dir),
         "--config", str(config), "--api", api, "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(fake),
    )  # fmt: skip


def _wait(condition, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


@pytest.mark.parametrize(
    ("api", "fault", "after", "seed"),
    [
        ("v1", "stall_before", 0, "seed"),  # killed with a request sent, not yet applied
        ("v1", "stall_after", 0, "seed"),  # applied by Stripe, answer never received
        ("v1", "stall_after", 30, "seed"),  # the same, mid-run
        ("v2", "stall_after", 0, "seed"),  # a stream request applied, answer lost
        # 660 events, 7 stream requests in 2 chunks: killed inside the first chunk, its
        # answered requests not yet written, the rest of it pending but never sent
        ("v2", "stall_after", 1, "seed-many"),
        ("v1", None, 40, "seed"),  # killed at whatever point the run had reached
    ],
)
def test_sigkill_then_rerun_is_exactly_once(
    tmp_path: Path, api: str, fault: str | None, after: int, seed: str
) -> None:
    fake = standin(meter_event_latency=0.002)
    try:
        config = write_config(tmp_path)
        data_dir = tmp_path / "data"
        _child(data_dir, config, seed)
        events = 72 if seed == "seed" else 660
        path = "/v1/billing/meter_events" if api == "v1" else "/v2/billing/meter_event_stream"
        state = fake.state
        # stall_before: Stripe holds the request, the client is killed, then Stripe applies
        # it anyway (the stand-in finishes a request whose client went away); shorter than
        # the rerun's retries so the rerun's 409 "idempotency key in use" ends in a replay.
        delay = 3.0 if fault == "stall_before" else 60.0
        if fault is not None and after == 0:
            state.faults.inject(fault, path=path, delay=delay)
        child = _sync(data_dir, config, fake, api)
        try:
            if after:
                _wait(lambda: sum(1 for r in state.requests if r[1] == path) >= after)
            if fault is not None:
                if after:
                    state.faults.inject(fault, path=path, delay=delay)
                _wait(lambda: any(f[0] == fault for f in state.faults.fired))
                time.sleep(0.3)  # the stalled request is in flight (applied or not)
            assert child.poll() is None, child.communicate()
            child.send_signal(signal.SIGKILL)
            assert child.wait(30) == -signal.SIGKILL
        finally:
            child.kill()
        state.faults.clear()
        applied_before = len(state.meter_events)
        if fault == "stall_before":  # the stalled request is applied after the kill
            _wait(lambda: len(state.meter_events) == applied_before + 1, timeout=30)
            applied_before += 1
        if api == "v1" or after:
            assert applied_before < events  # the kill cut the run short
        else:  # one stream request carried them all, applied; its answer never came
            assert applied_before == events
        rerun = _sync(data_dir, config, fake, api)
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err
        summary = json.loads(out)
        if fault is not None:  # the applied request was re-sent (replayed or refused as
            assert summary["resent"] >= 1  # a duplicate), and counted once: see the totals
        expected = json.loads(_child(data_dir, config, "expected").strip().splitlines()[-1])
        totals = state.totals()
        windows = {}
        for e in state.meter_events:
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
        assert len(totals) == 6 and len(expected) == 8
        count = len(state.meter_events)
        again = _sync(data_dir, config, fake, api)
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
        assert json.loads(out)["sent"] == 0 and len(state.meter_events) == count
    finally:
        fake.stop()
