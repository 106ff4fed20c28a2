"""The invoice push under a real kill: ``meterline stripe push-invoices`` is killed with
SIGKILL while a request is in flight (not yet applied, applied with its answer held back,
the draft's creation) or at whatever point it reached; run again, every line is in Stripe
exactly once and each draft totals its invoice to the cent; a further run sends nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from meterline.stripe_standin import StandinConfig, StandinServer
from tests.aggregator.pricing_config import CONFIG_YAML
from tests.stripe.test_push_invoices import PERIOD, STRIPE

ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS = {"acme": "cus_acme", "beta": "cus_beta"}
ITEMS = "/v1/invoiceitems"
TOTALS = {"cus_acme": 923, "cus_beta": 35}
"""The invoices' totals in cents (tests/aggregator/test_invoices.py: 9.23 and 0.35)."""


def _child(data_dir: Path, config: Path, command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.stripe._push_child", str(data_dir), str(config), command],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT,
    )  # fmt: skip
    return done.stdout


def _push(data_dir: Path, config: Path, fake: StandinServer) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
    env.update(STRIPE_API_KEY=fake.api_key, METERLINE_STRIPE_API_BASE=fake.base_addresses["api"])
    return subprocess.Popen(
        [sys.executable, "-m", "meterline", "stripe", "push-invoices", "--period", PERIOD,
         "--data-dir", str(data_dir), "--config", str(config), "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip


def _wait(condition, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


@pytest.mark.parametrize(
    ("fault", "path", "after", "forget"),
    [
        ("stall_before", ITEMS, 0, False),  # an item sent, not applied yet
        ("stall_after", ITEMS, 5, False),  # the 6th item applied, its answer never received
        ("stall_after", ITEMS, 5, True),  # the same, rerun when Stripe forgot the key (25 h)
        ("stall_after", "/v1/invoices", 0, False),  # the draft created, answer lost
        (None, ITEMS, 9, False),  # killed at whatever point the run had reached
    ],
)
def test_sigkill_mid_push_then_rerun_pushes_each_line_once(
    tmp_path: Path, fault: str | None, path: str, after: int, forget: bool
) -> None:
    fake = StandinServer(StandinConfig(customers=tuple(CUSTOMERS.values()))).start()
    state = fake.state
    try:
        config = tmp_path / "meterline.yaml"
        config.write_text(CONFIG_YAML + STRIPE, encoding="utf-8")
        data_dir = tmp_path / "data"
        _child(data_dir, config, "seed")
        if fault is not None and after == 0:
            state.faults.inject(fault, path=path, method="POST", delay=3)
        child = _push(data_dir, config, fake)
        try:
            if after:
                _wait(lambda: sum(1 for r in state.requests if r[1] == path) >= after)
            if fault is not None:
                if after:
                    state.faults.inject(fault, path=path, method="POST", delay=3)
                _wait(lambda: any(f[0] == fault for f in state.faults.fired))
                time.sleep(0.3)  # the stalled request is in flight (applied or not)
            assert child.poll() is None, child.communicate()
            child.send_signal(signal.SIGKILL)
            assert child.wait(30) == -signal.SIGKILL
        finally:
            child.kill()
        state.faults.clear()
        before = len(state.invoice_items)
        assert before < 18  # the kill cut the run short
        if forget:
            time.sleep(3.5)  # the stalled request finished inside the stand-in
            state.clock.advance(25 * 3600)
            state.prune()
        rerun = _push(data_dir, config, fake)
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err
        summary = json.loads(out)
        assert [r["consumer"] for r in summary["reported"]] == ["initech"]
        keys = Counter(i["metadata"]["meterline_key"] for i in state.invoice_items.values())
        assert (
            len(keys) == 18 and max(keys.values()) == 1
        )  # 16 of acme (a 0.00 line skipped), 2 of beta, once
        for customer, total in TOTALS.items():
            [draft] = [i for i in state.invoices.values() if i["customer"] == customer]
            assert draft["total"] == total, customer
        # every item Stripe applied before the kill was found there, not sent again (the
        # draft is one of them when its creation was the request cut short)
        recovered = summary["recovered"]
        assert recovered >= before if fault == "stall_before" else recovered == before + (
            path != ITEMS)  # fmt: skip
        snapshot = json.dumps(state.snapshot()["invoice_items"], sort_keys=True)
        again = _push(data_dir, config, fake)
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
        assert json.loads(out)["pushed"] == []
        assert json.dumps(state.snapshot()["invoice_items"], sort_keys=True) == snapshot
    finally:
        fake.stop()
