"""Group commit of the reservation ledger's writes (``Ledger.persist``): concurrent reserves
share one insert into the store instead of one each, every caller returns only once its
own rows are written, and an insert that fails fails every caller whose rows it held."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from meterline.aggregator.budgets import Ledger, Reservation
from meterline.aggregator.budgets._ledger import new_id


def reservation(consumer: str) -> Reservation:
    now = datetime.now(UTC)
    return Reservation(
        id=new_id(), consumer=consumer, feature=None, provider="openai", model="gpt-4o",
        money=Decimal("0.01"), tokens=10, status="reserved", created_at=now,
        expires_at=now + timedelta(minutes=5),
    )  # fmt: skip


def stored_ids(store, consumer: str) -> set[str]:
    _, rows = store.query(
        "SELECT Id FROM {db}.budget_reservations WHERE ConsumerId = {c:String}", {"c": consumer}
    )
    return {str(r[0]) for r in rows}


def slow_inserts(monkeypatch, store, fail_on: set[int] = frozenset()) -> list[int]:
    """Each insert into the store takes 0.1 s more (so callers queue behind it); returns
    the rows of each insert, in order; the inserts numbered in ``fail_on`` raise."""
    sizes: list[int] = []
    real = store.insert_columns

    def insert(table, columns, names, *args, **kwargs):
        if table == "budget_reservations":
            sizes.append(len(columns[0]))
            time.sleep(0.1)
            if len(sizes) - 1 in fail_on:
                raise OSError("disk full")
        return real(table, columns, names, *args, **kwargs)

    monkeypatch.setattr(store, "insert_columns", insert)
    return sizes


def test_concurrent_writes_share_inserts_and_all_are_written(store, monkeypatch):
    ledger = Ledger(store)
    sizes = slow_inserts(monkeypatch, store)
    barrier = threading.Barrier(40)
    written: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        r = reservation("gc")
        barrier.wait()
        ledger.persist([r])
        # returned: the row is in the store already
        assert r.id in stored_ids(store, "gc")
        with lock:
            written.append(r.id)

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(written) == 40 and stored_ids(store, "gc") == set(written)
    assert sum(sizes) == 40 and len(sizes) <= 10, sizes  # one insert each before


def test_a_failed_insert_fails_each_of_its_callers(store, monkeypatch):
    ledger = Ledger(store)
    sizes = slow_inserts(monkeypatch, store, fail_on={1})
    first = threading.Thread(target=ledger.persist, args=([reservation("gc-f")],))
    first.start()
    time.sleep(0.03)  # the first insert is running: the next five gather behind it
    errors: list[BaseException | None] = []

    def one() -> None:
        try:
            ledger.persist([reservation("gc-f")])
            errors.append(None)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in [*threads, first]:
        t.join(timeout=30)
    assert sizes == [1, 5]
    assert len(errors) == 5 and all(isinstance(e, OSError) for e in errors)
    assert len(stored_ids(store, "gc-f")) == 1
    ledger.persist([reservation("gc-f")])  # the next write goes through
    assert len(stored_ids(store, "gc-f")) == 2


def test_nothing_to_write_writes_nothing(store, monkeypatch):
    sizes = slow_inserts(monkeypatch, store)
    Ledger(store).persist([])
    assert sizes == []
