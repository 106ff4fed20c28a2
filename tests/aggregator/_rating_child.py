"""A child process of the kill -9 test (chdb: one process per data directory).

``python -m tests.aggregator._rating_child DATA_DIR seed|late|rate STEP|check``; prints
one JSON line (``rate STEP`` prints ``stalled STEP`` and waits to be killed).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta

from meterline.aggregator.invoices import month
from meterline.aggregator.invoices._service import compute_invoices, rate_invoices_on_the_fly
from meterline.aggregator.pricing import Pricing, parse_pricing_config
from meterline.aggregator.rated import _run, ensure_rated, invoices_from_table, stale_months
from meterline.aggregator.rated._read import current_monthly_sums
from meterline.aggregator.tenancy import Scope
from meterline.store import open_store
from tests.aggregator._calls import Call, insert_calls

PRICING = {"currency": "USD", "models": [
    {"provider": "openai", "model": "gpt-4o",
     "per_million_tokens": {"input": "2.50", "cache_read": "1.25", "output": "10.00"}}],
    "plans": {"consumers": {"acme": {"markup_percent": "20"}}}}  # fmt: skip
MARCH = month("2026-03")
START = datetime(2026, 3, 1, tzinfo=UTC)


def _invoices(invoices: dict) -> dict:
    return {c: inv.to_dict() for c, inv in invoices.items()}


def main() -> None:
    data_dir, command, *rest = sys.argv[1:]
    store = open_store(data_dir=data_dir, database="kill")
    store.migrate()
    pricing = Pricing.build(parse_pricing_config(PRICING), None)
    out: dict = {}
    if command == "seed":  # every hour of March, two consumers
        insert_calls(store, [
            Call(at=START + timedelta(hours=h, minutes=7), consumer=c, input=1000 + h,
                 output=10 * h, cache_read=h, response_id=f"{c}-{h}")
            for h in range(31 * 24) for c in ("acme", "beta")])  # fmt: skip
        ensure_rated(store, pricing)
        out["invoices"] = _invoices(compute_invoices(store, pricing, MARCH, scope=Scope.ALL))
    elif command == "late":  # late data into rated hours; reports that displace others
        insert_calls(store, [
            Call(at=START + timedelta(hours=h, minutes=30), consumer="acme", input=5, output=5)
            for h in range(0, 31 * 24, 5)])  # fmt: skip
        insert_calls(store, [
            Call(at=START + timedelta(hours=h), consumer="beta", input=1, output=1,
                 response_id=f"beta-{h}")
            for h in range(0, 31 * 24, 7)])  # fmt: skip
    elif command == "rate":

        def stall(step: str, month: int) -> None:
            if (step, month) == (rest[0], 202603):
                print(json.dumps({"stalled": step}), flush=True)
                time.sleep(600)

        _run._after_step = stall
        ensure_rated(store, pricing)
    elif command == "check":
        _, [(orphans,)] = store.query(
            "SELECT count() FROM {db}.rated_usage WHERE (Hour, Run) NOT IN"
            " (SELECT Hour, arrayJoin(Runs) FROM {db}.rated_hours FINAL)"
        )
        out = {
            "orphan_rows": orphans,
            "stale": [m for m, _ in stale_months(store, pricing)],
            "as_read_now": _invoices(
                invoices_from_table(
                    store,
                    pricing,
                    start=MARCH.start,
                    end=MARCH.end,
                    label=MARCH.label,
                    scope=Scope.ALL,
                )
            ),
            "as_read_daily": _invoices(
                invoices_from_table(
                    store,
                    pricing,
                    start=MARCH.start,
                    end=MARCH.end,
                    label=MARCH.label,
                    scope=Scope.ALL,
                    monthly=False,
                )
            ),
            "monthly_sums_current": current_monthly_sums(store, MARCH.start, MARCH.end) == [202603],
            "as_read_hourly": _invoices(
                invoices_from_table(
                    store,
                    pricing,
                    start=MARCH.start,
                    end=MARCH.end,
                    label=MARCH.label,
                    scope=Scope.ALL,
                    daily=False,
                )
            ),
            "on_the_fly": _invoices(
                rate_invoices_on_the_fly(store, pricing, MARCH, scope=Scope.ALL)
            ),
        }
        ensure_rated(store, pricing)
        out["after_catch_up"] = _invoices(compute_invoices(store, pricing, MARCH, scope=Scope.ALL))
        out["stale_after"] = [m for m, _ in stale_months(store, pricing)]
        out["monthly_after"] = current_monthly_sums(store, MARCH.start, MARCH.end)
    print(json.dumps(out), flush=True)
    store.close()


if __name__ == "__main__":
    main()
