"""A child process of the kill tests (chdb: one process per data directory).

``python -m tests.stripe._sync_child DATA_DIR CONFIG seed|seed-many|expected``; ``expected``
prints one JSON line: (customer, meter) → what the invoices of the closed windows bill.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta

from meterline.aggregator.invoices import between, compute_invoices, load_store_pricing
from meterline.aggregator.tenancy import Scope
from meterline.store import open_store
from tests.aggregator._calls import Call, insert_calls
from tests.stripe._support import expected_from_invoices, hours_ago

CUSTOMERS = {"acme": "cus_acme", "globex": "cus_globex"}


def main() -> None:
    data_dir, config, command = sys.argv[1:4]
    store = open_store(data_dir=data_dir, database="meterline")
    store.migrate()
    if command == "seed":  # 12 closed hours × 2 consumers × 3 meters = 72 events
        insert_calls(store, [
            Call(at=hours_ago(h) + timedelta(minutes=m), consumer=c, input=1000 + 7 * h + m,
                 output=13 * h + m, cache_read=h,
                 model="gpt-4o" if c == "acme" else "claude-sonnet-4",
                 provider="openai" if c == "acme" else "anthropic")
            for h in range(2, 14) for c in ("acme", "globex") for m in (3, 31)])  # fmt: skip
    elif command == "seed-many":  # 110 closed hours × 2 consumers × 3 meters = 660 events
        insert_calls(store, [
            Call(at=hours_ago(h) + timedelta(minutes=7), consumer=c, input=500 + h,
                 output=3 * h + 1, cache_read=h % 5,
                 model="gpt-4o" if c == "acme" else "claude-sonnet-4",
                 provider="openai" if c == "acme" else "anthropic")
            for h in range(2, 112) for c in ("acme", "globex")])  # fmt: skip
    elif command == "expected":
        pricing = load_store_pricing(store, config)
        end = hours_ago(1)
        invoices = compute_invoices(store, pricing, between(end - timedelta(days=40), end),
                                    scope=Scope.ALL)  # fmt: skip
        out = expected_from_invoices(invoices.values(), CUSTOMERS, pricing)
        print(json.dumps({f"{c}|{m}": str(v) for (c, m), v in out.items()}), flush=True)
    store.close()


if __name__ == "__main__":
    main()
