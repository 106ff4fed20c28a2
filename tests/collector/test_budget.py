"""The receivers' byte budget, the incremental gunzip, and the writer's byte bounds."""

from __future__ import annotations

import gzip

import pytest

from meterline.collector.budget import BodyBudget, OverBudget
from meterline.collector.otlp_http import MAX_BODY_BYTES, _gunzip, _HTTPError
from meterline.collector.writer import Overloaded, Writer
from meterline.store import Store
from tests.collector.test_writer import rows


def test_reservations_share_the_budget_and_give_it_back() -> None:
    budget = BodyBudget(100)
    with budget.reservation() as first:
        first.add(60)
        with budget.reservation() as second:
            with pytest.raises(OverBudget):
                second.add(50)  # 110 > 100
            second.add(40)
            assert budget.used == 100
        assert budget.used == 60
    assert budget.used == 0
    with budget.reservation() as alone:
        alone.add(500)  # a lone request always fits (its own size is bounded elsewhere)
    assert budget.used == 0


def test_gunzip_is_incremental_and_bounded() -> None:
    budget = BodyBudget(10 * MAX_BODY_BYTES)
    data = bytes(range(256)) * 40_000  # 10 MB
    with budget.reservation() as held:
        assert _gunzip(gzip.compress(data), held) == data
        assert held.held == len(data)  # every decompressed byte was counted
    with budget.reservation() as held, pytest.raises(_HTTPError) as too_big:
        _gunzip(gzip.compress(bytes(MAX_BODY_BYTES + 1)), held)
    assert too_big.value.status == 413
    with budget.reservation() as held, pytest.raises(_HTTPError) as truncated:
        _gunzip(gzip.compress(data)[:-100], held)
    assert truncated.value.status == 400
    small = BodyBudget(1024 * 1024)
    with small.reservation() as other:
        other.add(1)
        with small.reservation() as held, pytest.raises(OverBudget):
            _gunzip(gzip.compress(data), held)  # refused after the first MiB, not after 10


def test_writer_bounds_pending_bytes_and_insert_bytes(store: Store) -> None:
    writer = Writer(store, max_pending_bytes=1000, batch_max_bytes=700, linger=0.5,
                    batch_min=10**6)  # fmt: skip
    inserts: list[int] = []
    real = writer._insert
    writer._insert = lambda items: (inserts.append(len(items)), real(items))[1]  # type: ignore[method-assign]
    sized = []
    for _ in range(3):
        r = rows(2)
        r.nbytes = 400
        sized.append(r)
    futures = [writer.submit(sized[0]), writer.submit(sized[1])]
    with pytest.raises(Overloaded, match="bytes"):
        writer.submit(sized[2])  # 1200 > 1000
    assert [f.result(30) for f in futures] == [2, 2]
    writer.close()
    assert inserts == [1, 1]  # 800 bytes would exceed one insert's 700
