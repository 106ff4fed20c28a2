"""Re-deriving llm_usage from the otel_traces parts written since the checkpoint.

The kill -9 itself is in ``tests/e2e/test_kill.py``; here the disagreement is made
directly (spans inserted while the view is detached, as a kill between the table's
part and the view's leaves them) and the repair is checked row for row.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from meterline.collector.decode import COLUMNS
from meterline.store import reconcile
from tests.collector.test_writer import rows

if TYPE_CHECKING:
    from meterline.store import Store


def usage(store: Store) -> list[tuple]:
    _, result = store.query(
        "SELECT DedupKey, InputTokens, Timestamp FROM {db}.llm_usage FINAL ORDER BY DedupKey"
    )
    return result


def raw_usage_rows(store: Store) -> int:
    return store.query("SELECT count() FROM {db}.llm_usage")[1][0][0]


def insert(store: Store, n: int) -> None:
    batch = rows(n, consumer="rc")
    store.insert_columns("otel_traces", batch.columns, COLUMNS)


def test_spans_without_usage_get_it_back_counted_once(store: Store) -> None:
    insert(store, 5)  # before the checkpoint: consistent
    expected_old = usage(store)
    time.sleep(reconcile.MARGIN + 1.1)  # modification_time has whole seconds
    checkpoint = time.time()
    reconcile.write_checkpoint(store, checkpoint)
    insert(store, 3)  # in flight at the "kill": its usage made it
    store.command("DETACH TABLE {db}.llm_usage_mv")
    insert(store, 4)  # the view's part never committed
    store.command("ATTACH TABLE {db}.llm_usage_mv")
    assert len(usage(store)) == 8

    assert reconcile.reconcile_at_start(store) == 7  # the rows of the parts since then

    after = usage(store)
    assert len(after) == 12 and set(expected_old) <= set(after)
    assert reconcile.read_checkpoint(store) >= checkpoint
    # running it again (another kill during the restart) never counts a span twice
    assert reconcile.reconcile(store, since=checkpoint - 2) == 7
    assert usage(store) == after
    store.command("OPTIMIZE TABLE {db}.llm_usage FINAL")
    assert usage(store) == after and raw_usage_rows(store) == 12


def test_no_checkpoint_starts_one_and_rederives_nothing(store: Store) -> None:
    store.command("DETACH TABLE {db}.llm_usage_mv")
    insert(store, 2)
    store.command("ATTACH TABLE {db}.llm_usage_mv")
    path = reconcile._path(store)
    path.unlink(missing_ok=True)
    assert reconcile.reconcile_at_start(store) == 0
    assert reconcile.read_checkpoint(store) is not None
    assert usage(store) == []


def test_parts_before_the_checkpoint_are_not_read(store: Store) -> None:
    insert(store, 2)
    assert reconcile.reconcile(store, since=time.time() + 5) == 0
    assert raw_usage_rows(store) == 2


def test_checkpointer_advances_to_the_writers_safe_time(store: Store) -> None:
    times = iter([100.0, 200.0, 300.0, 400.0, 500.0])
    checkpointer = reconcile.Checkpointer(store, lambda: next(times), interval=0.05)
    deadline = time.monotonic() + 5
    while (reconcile.read_checkpoint(store) or 0) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    checkpointer.stop()
    last = reconcile.read_checkpoint(store)
    assert last is not None and last >= 300  # stop() wrote one more after the thread's


def test_checkpoints_are_per_database(store: Store) -> None:
    from meterline.store import open_store

    other = open_store(data_dir=store.data_dir, database=f"{store.database}/x'y")
    reconcile.write_checkpoint(store, 1.0)
    reconcile.write_checkpoint(other, 2.0)
    assert (reconcile.read_checkpoint(store), reconcile.read_checkpoint(other)) == (1.0, 2.0)
    reconcile._path(other).unlink()
