"""A child process of the push kill tests (chdb: one process per data directory).

``python -m tests.stripe._push_child DATA_DIR CONFIG seed`` stores March 2026's calls
and finalises the month.
"""

from __future__ import annotations

import sys

from meterline.aggregator.invoices import finalize, load_store_pricing
from meterline.store import open_store
from tests.aggregator._calls import insert_calls
from tests.aggregator.test_invoices import CALLS
from tests.stripe.test_push_invoices import INITECH, PERIOD


def main() -> None:
    data_dir, config, command = sys.argv[1:4]
    store = open_store(data_dir=data_dir, database="meterline")
    store.migrate()
    pricing = load_store_pricing(store, config)
    if command == "seed":
        insert_calls(store, [*CALLS, *INITECH])
        finalize(store, pricing, PERIOD)
    store.close()


if __name__ == "__main__":
    main()
