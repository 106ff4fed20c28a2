"""Finalising a month: only once it ended plus the grace (``stripe.grace``), and one writer
at a time per period — concurrent finalisations or re-pricings never write twice.

Concurrency runs real threads, each with its own engine client, against one store: the
engine's insert deduplication picks the winner (aggregator/invoices/_claims.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from meterline.aggregator.app import create_app
from meterline.aggregator.invoices import (
    CLAIM_LEASE,
    InvoiceError,
    PeriodBusyError,
    PeriodOpenError,
    finalize,
    load_store_pricing,
    month,
    reprice,
)
from meterline.aggregator.pricing import PricingConfigError, parse_duration
from meterline.cli import app
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator.pricing_config import CONFIG_YAML, write_config
from tests.aggregator.test_invoices import CALLS

MARCH = month("2026-03")


def _pricing(store: Store, tmp_path: Path, extra: str = "", base: str = CONFIG_YAML) -> Any:
    return load_store_pricing(store, write_config(tmp_path, base + extra))


def _current_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


# --- not before the month ended plus the grace -------------------------------------


def test_the_current_month_is_refused_unless_allow_open(store: Store, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    insert_calls(store, [Call(now, model="gpt-4o", input=1_000)])
    pricing = _pricing(store, tmp_path)
    with pytest.raises(PeriodOpenError, match=r"has not ended: it may be finalised from "):
        finalize(store, pricing, _current_month())
    _, [(n,)] = store.query("SELECT count() FROM {db}.billing_periods")
    assert n == 0
    final, invoices = finalize(store, pricing, _current_month(), allow_open=True)
    assert final.revision == 1 and set(invoices) == {"acme"}


def test_a_future_month_is_refused(store: Store, tmp_path: Path) -> None:
    pricing = _pricing(store, tmp_path)
    with pytest.raises(PeriodOpenError, match="has not ended"):
        finalize(store, pricing, f"{datetime.now(UTC).year + 1}-01")


@pytest.mark.parametrize(
    ("extra", "after_end", "ok"),
    [
        ("", timedelta(0), False),  # default grace 1 h: the first instant after the month
        ("", timedelta(minutes=59, seconds=59), False),
        ("", timedelta(hours=1), True),
        ("stripe:\n  grace: 2h\n", timedelta(hours=1, minutes=30), False),
        ("stripe:\n  grace: 2h\n", timedelta(hours=2), True),
        ("stripe:\n  grace: 1h30m\n", timedelta(hours=1, minutes=29), False),
        ("stripe:\n  grace: 0\n", timedelta(0), True),
        ("stripe:\n  grace: 1d\n", timedelta(hours=23), False),
        ("", -timedelta(seconds=1), False),  # the month's last second
    ],
)
def test_grace_after_the_month_end(
    store: Store, tmp_path: Path, extra: str, after_end: timedelta, ok: bool
) -> None:
    insert_calls(store, CALLS)
    pricing = _pricing(store, tmp_path, extra)
    now = MARCH.end + after_end
    if ok:
        assert finalize(store, pricing, "2026-03", now=now)[0].revision == 1
    else:
        with pytest.raises(
            PeriodOpenError, match=r"may be finalised from 2026-04-0\dT\d\d:\d\d:00Z"
        ):
            finalize(store, pricing, "2026-03", now=now)


@pytest.mark.parametrize("value", ["1 hour", "1.5h", "-1h", "h", "", 3600, 1.5, True, "1h 30m"])
def test_bad_grace_is_a_configuration_error(value: object) -> None:
    with pytest.raises(PricingConfigError, match=r"stripe\.grace: .* is not a duration"):
        parse_duration(value, "stripe.grace")


def test_api_and_cli_refuse_an_open_month(store: Store, tmp_path: Path, monkeypatch) -> None:
    insert_calls(store, [Call(datetime.now(UTC), model="gpt-4o", input=1_000)])
    config = write_config(tmp_path)
    client = TestClient(create_app(ServerSettings(config=config), store))
    client.headers["content-type"] = "application/json"  # the open API's guard
    label = _current_month()
    refused = client.post(f"/v1/periods/{label}/finalize")
    assert refused.status_code == 409 and "allow_open" in refused.json()["detail"]
    assert client.get(f"/v1/periods/{label}").json()["status"] == "open"

    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    local = ["--data-dir", store.data_dir, "--database", store.database, "--config", str(config)]
    runner = CliRunner()
    result = runner.invoke(app, ["finalize", "--period", label, *local])
    assert result.exit_code == 1 and "has not ended" in result.output
    assert "--allow-open" in result.output
    result = runner.invoke(app, ["finalize", "--period", label, "--allow-open", *local])
    assert result.exit_code == 0, result.output
    assert f"Finalised {label} (revision 1)" in result.output
    assert client.post(
        f"/v1/periods/{label}/finalize", params={"allow_open": True}
    ).status_code == (
        409  # already final now
    )


def test_api_allow_open(store: Store, tmp_path: Path) -> None:
    insert_calls(store, [Call(datetime.now(UTC), model="gpt-4o", input=1_000)])
    client = TestClient(create_app(ServerSettings(config=write_config(tmp_path)), store))
    client.headers["content-type"] = "application/json"  # the open API's guard
    done = client.post(f"/v1/periods/{_current_month()}/finalize", params={"allow_open": True})
    assert done.status_code == 200 and done.json()["revision"] == 1


# --- one writer at a time ----------------------------------------------------------


def _race(n: int, work: Callable[[], Any]) -> list[Any]:
    """Run ``work`` in ``n`` threads released together; each result or exception."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def _rows(store: Store, table: str) -> int:
    _, [(n,)] = store.query(f"SELECT count() FROM {{db}}.{table}")  # no FINAL: every write
    return int(n)


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_finalisations_write_revision_1_once(
    store: Store, tmp_path: Path, round_: int
) -> None:
    insert_calls(store, CALLS)
    pricing = _pricing(store, tmp_path)
    results = _race(4, lambda: finalize(store, pricing, "2026-03"))
    won = [r for r in results if isinstance(r, tuple)]
    lost = [r for r in results if not isinstance(r, tuple)]
    assert len(won) == 1, results
    assert all(isinstance(r, InvoiceError) for r in lost), lost  # busy or already final
    assert _rows(store, "billing_periods") == 1
    assert _rows(store, "invoices") == len(won[0][1]) == 3  # acme, beta, gamma: once each


def test_concurrent_reprices_record_one_adjustment(store: Store, tmp_path: Path) -> None:
    insert_calls(store, CALLS)
    finalize(store, _pricing(store, tmp_path), "2026-03")
    cheaper = _pricing(store, tmp_path, base=CONFIG_YAML.replace('input: "2.50"', 'input: "1.50"'))
    results = _race(4, lambda: reprice(store, cheaper, "2026-03"))
    adjusted = [r for r in results if not isinstance(r, Exception) and r.action == "adjusted"]
    assert len(adjusted) == 1, results
    assert all(isinstance(r, PeriodBusyError) or r.action == "none" for r in results
               if r is not adjusted[0])  # fmt: skip
    _, rows = store.query(
        "SELECT ConsumerId, count() FROM {db}.invoice_adjustments GROUP BY ConsumerId"
    )
    assert dict(rows) == {"acme": 1, "beta": 1}


def test_concurrent_forced_reprices_issue_one_revision(store: Store, tmp_path: Path) -> None:
    insert_calls(store, CALLS)
    pricing = _pricing(store, tmp_path)
    finalize(store, pricing, "2026-03")
    results = _race(3, lambda: reprice(store, pricing, "2026-03", force=True))
    issued = [r for r in results if not isinstance(r, Exception)]
    assert len(issued) == 1 and issued[0].revision == 2, results
    _, [(revisions,)] = store.query(
        "SELECT groupArraySorted(10)(Revision) FROM {db}.billing_periods"
    )
    assert revisions == [1, 2]


def _claim_row(store: Store, age: timedelta) -> None:
    """A claim whose writer stopped without releasing it (killed mid-finalisation)."""
    at = datetime.now(UTC) - age
    store.insert_columns(
        "period_claims",
        [["2026-03"], [""], ["dead"], ["claimed"], ["finalising"], [at]],
        ("Period", "Parent", "ClaimId", "Status", "Action", "ClaimedAt"),
    )


def test_a_held_claim_refuses_then_its_lease_expires(store: Store, tmp_path: Path) -> None:
    insert_calls(store, CALLS)
    pricing = _pricing(store, tmp_path)
    _claim_row(store, timedelta(seconds=5))
    with pytest.raises(PeriodBusyError, match=r"being changed by another process \(finalising"):
        finalize(store, pricing, "2026-03")
    assert _rows(store, "billing_periods") == 0


def test_a_stale_claim_is_taken_over(store: Store, tmp_path: Path) -> None:
    insert_calls(store, CALLS)
    pricing = _pricing(store, tmp_path)
    _claim_row(store, CLAIM_LEASE + timedelta(seconds=1))
    assert finalize(store, pricing, "2026-03")[0].revision == 1
    # released: the next change of the period goes ahead at once
    assert reprice(store, pricing, "2026-03").action == "none"
    assert reprice(store, pricing, "2026-03", force=True).revision == 2


def test_finalised_periods_before_claims_still_reprice(store: Store, tmp_path: Path) -> None:
    """A period finalised by an earlier release (no claim rows) is repriced normally."""
    insert_calls(store, [Call(utc(2026, 3, 2), model="gpt-4o", input=1_000)])
    pricing = _pricing(store, tmp_path)
    finalize(store, pricing, "2026-03")
    store.command("TRUNCATE TABLE {db}.period_claims")
    assert reprice(store, pricing, "2026-03", force=True).revision == 2
