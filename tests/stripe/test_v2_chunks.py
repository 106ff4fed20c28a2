"""The v2 sync writes its ledger per chunk of events, not per stream request, and keeps
exactly-once: every event of a request is in the ledger (``pending``) before the request
leaves, every answer is written after it, and a run stopped between chunks or inside one
leaves only rows the next run settles."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from meterline.aggregator.invoices import load_store_pricing
from meterline.aggregator.stripe import Ledger, load_stripe_config, run_sync
from meterline.aggregator.stripe._ledger import ACCEPTED, PENDING, LedgerRow
from meterline.aggregator.stripe._sync import V2_CHUNK
from meterline.store import Store
from meterline.stripe_standin import StandinServer
from tests.aggregator._calls import Call, insert_calls
from tests.stripe._support import client_for, hours_ago, standin, write_config

HOURS = 110  # 2 consumers × 110 hours × 3 meters = 660 events: 7 requests, 2 chunks
EVENTS = 2 * HOURS * 3


@pytest.fixture
def fake() -> Iterator[StandinServer]:
    server = standin()
    try:
        yield server
    finally:
        server.stop()


def _seed(store: Store) -> None:
    insert_calls(store, [Call(at=hours_ago(h), consumer=c, input=100 + h, output=h + 1)
                         for h in range(2, 2 + HOURS) for c in ("acme", "globex")])  # fmt: skip


def _ledger_states(store: Store) -> dict[str, str]:
    return {r.identifier: r.state for rows in Ledger(store).slots().values() for r in rows}


def _observe(store: Store, client: Any) -> tuple[list[int], list[dict[str, str]], list[list[str]]]:
    """Wrap the client's stream requests and the ledger's inserts: what the ledger held
    when each request left, and how many rows each insert carried."""
    inserts: list[int] = []
    seen: list[dict[str, str]] = []
    requests: list[list[str]] = []
    original_stream, original_insert = client.stream, store.insert_columns

    def stream(events: Any, *, key: str) -> Any:
        requests.append([e["identifier"] for e in events])
        seen.append(_ledger_states(store))
        return original_stream(events, key=key)

    def insert_columns(table: str, columns: Any, names: Any, **kw: Any) -> None:
        if table == "stripe_ledger":
            inserts.append(len(columns[0]))
        original_insert(table, columns, names, **kw)

    client.stream = stream
    store.insert_columns = insert_columns  # type: ignore[method-assign]
    return inserts, seen, requests


def test_every_event_is_pending_before_its_request_and_accepted_after(
    store: Store, tmp_path: Path, fake: StandinServer
) -> None:
    _seed(store)
    path = write_config(tmp_path)
    config, pricing = load_stripe_config(path), load_store_pricing(store, path)
    assert config is not None
    client = client_for(fake)
    inserts, seen, requests = _observe(store, client)
    summary = run_sync(store, config, pricing=pricing, client=client, api="v2")
    assert summary.sent == EVENTS and summary.ok
    assert len(requests) == 7 and all(len(r) <= 100 for r in requests)
    for ids, ledger in zip(requests, seen, strict=True):  # written before it left
        assert all(ledger.get(i) == PENDING for i in ids)
    # the first chunk's answers were not written before the second chunk's rows: one
    # insert carries both (500 answers + 160 new rows), then the last answers
    assert inserts == [V2_CHUNK, V2_CHUNK + EVENTS - V2_CHUNK, EVENTS - V2_CHUNK]
    states = _ledger_states(store)
    assert len(states) == EVENTS and set(states.values()) == {ACCEPTED}
    assert len(fake.state.meter_events) == EVENTS
    again = run_sync(store, config, pricing=pricing, client=client, api="v2")
    assert again.sent == 0 and len(fake.state.meter_events) == EVENTS


def test_a_run_stopped_inside_a_chunk_keeps_its_answers_and_the_next_run_settles_the_rest(
    store: Store, tmp_path: Path, fake: StandinServer
) -> None:
    _seed(store)
    path = write_config(tmp_path)
    config, pricing = load_stripe_config(path), load_store_pricing(store, path)
    assert config is not None
    stop = threading.Event()
    client = client_for(fake)
    client._stop = stop  # as `meterline serve` does on SIGTERM
    original = client.stream
    sent: list[int] = []

    def stream(events: Any, *, key: str) -> Any:
        answer = original(events, key=key)
        sent.append(len(events))
        if len(sent) == 2:  # two requests of the first chunk answered, then SIGTERM
            stop.set()
        return answer

    client.stream = stream  # type: ignore[method-assign]
    first = run_sync(store, config, pricing=pricing, client=client, api="v2")
    assert first.sent == 200 and len(fake.state.meter_events) == 200
    states = _ledger_states(store)
    # the answered requests are recorded even though the chunk did not end; the rest of
    # the chunk is pending (written before its first request), the next chunk unwritten
    assert list(states.values()).count(ACCEPTED) == 200
    assert list(states.values()).count(PENDING) == V2_CHUNK - 200
    assert len(states) == V2_CHUNK
    second = run_sync(store, config, pricing=pricing, client=client_for(fake), api="v2")
    assert second.ok and second.resent == V2_CHUNK - 200
    assert second.sent == EVENTS - V2_CHUNK
    assert len(fake.state.meter_events) == EVENTS  # each event once
    assert set(_ledger_states(store).values()) == {ACCEPTED}


def test_moved_keeps_every_field_but_the_state_answer_and_time() -> None:
    row = LedgerRow(consumer="acme", event_name="m", window_start=datetime(2026, 1, 1, tzinfo=UTC),
                    window_seconds=3600, seq=3, kind="cancel", identifier="ml-x-3",
                    customer="cus_acme", value=-7, state=PENDING, api="v1", target="ml-x-1",
                    answer="", created_at=datetime(2026, 1, 2, tzinfo=UTC),
                    updated_at=datetime(2026, 1, 2, tzinfo=UTC))  # fmt: skip
    at = datetime(2026, 1, 3, tzinfo=UTC)
    moved = row.moved(ACCEPTED, "{}", at)
    assert moved == dataclasses.replace(row, state=ACCEPTED, answer="{}", updated_at=at)
    assert row.moved(ACCEPTED).updated_at > row.updated_at
