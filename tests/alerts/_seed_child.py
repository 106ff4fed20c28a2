"""``python -m tests.alerts._seed_child DATA_DIR INPUT_TOKENS``: one acme gpt-4o call of
that many input tokens a minute ago, written into the data directory (chdb: one process
per data directory, so before ``serve`` starts)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from meterline.store import open_store
from tests.aggregator._calls import Call, insert_calls


def main() -> None:
    data_dir, tokens = sys.argv[1], int(sys.argv[2])
    store = open_store(data_dir=data_dir, database="meterline")
    store.migrate()
    insert_calls(store, [Call(datetime.now(UTC) - timedelta(minutes=1), input=tokens)])
    store.close()


if __name__ == "__main__":
    main()
