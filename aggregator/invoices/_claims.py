"""One writer at a time per billing period: a claim the engine arbitrates.

Finalising a month, re-issuing it and recording re-pricing adjustments each change the
period's stored state. Two aggregators (or two threads) doing it at once would both write
revision 1, or record one difference twice. So each such change first *claims* the period:

- ``period_claims`` holds a chain of claims per period; each claim names the claim it
  follows (``Parent``: the head its writer saw, ``""`` for the first).
- A claim is inserted with ``insert_deduplication_token = "<period>|<parent>"``: the engine
  keeps the first block with a token and silently drops later ones (the table's
  ``non_replicated_deduplication_window``; on a ``ReplicatedMergeTree`` the same check
  runs in Keeper, across replicas). Reading the parent's children back after the insert
  tells each writer whether it won; exactly one does.
- The winner re-reads the period and writes; afterwards it appends a ``released`` row.
  A head that is neither released nor older than :data:`CLAIM_LEASE` means another writer
  is at work: the newcomer is refused. A head older than the lease (its writer died)
  may be followed by a new claim, which the engine again arbitrates.

What guarantees what: the engine's insert deduplication decides the winner — one process
on the embedded store, or any number of aggregators on one ClickHouse server or on a
replicated ``period_claims`` (Keeper). Not covered: a ``Distributed`` ``period_claims``
sharded other than by ``Period`` (create it as one replicated table), and a writer that
stalls longer than the lease while a newcomer takes over (the lease is measured on each
aggregator's clock: keep them in NTP sync).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from meterline.aggregator.invoices._errors import PeriodBusyError
from meterline.store import Store

logger = logging.getLogger(__name__)

CLAIM_LEASE = timedelta(minutes=10)
"""How long a claim that was never released blocks others (its writer may have died)."""

CLAIMS_SQL = """
SELECT Parent, ClaimId, Status, Action, ClaimedAt
FROM {db}.period_claims
WHERE Period = {period:String}
ORDER BY ClaimedAt, ClaimId
"""

CLAIM_COLUMNS = ("Period", "Parent", "ClaimId", "Status", "Action", "ClaimedAt")


@dataclass(frozen=True)
class _Claim:
    parent: str
    claim_id: str
    action: str
    claimed_at: datetime


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _chain(store: Store, period: str) -> tuple[dict[str, _Claim], set[str]]:
    """The first claim following each parent, and the released claim ids."""
    _, rows = store.query(CLAIMS_SQL, {"period": period})
    first: dict[str, _Claim] = {}
    released: set[str] = set()
    for parent, claim_id, status, action, at in rows:
        if status == "released":
            released.add(str(claim_id))
        elif str(parent) not in first:  # rows come oldest first: ties resolve alike everywhere
            first[str(parent)] = _Claim(str(parent), str(claim_id), str(action), _utc(at))
    return first, released


def _head(first: dict[str, _Claim]) -> _Claim | None:
    head, parent = None, ""
    while parent in first:
        head = first[parent]
        parent = head.claim_id
    return head


@contextmanager
def period_claim(store: Store, period: str, action: str) -> Iterator[str]:
    """Hold the period's claim while the block runs (it re-reads the period inside).

    Args:
        action: what the holder does, shown to a writer it turns away ("finalising").

    Raises:
        PeriodBusyError: another writer holds the claim or won it now.
    """
    first, released = _chain(store, period)
    head = _head(first)
    now = datetime.now(UTC)
    if head is not None and head.claim_id not in released and now - head.claimed_at < CLAIM_LEASE:
        raise PeriodBusyError(
            f"period {period} is being changed by another process ({head.action} since "
            f"{head.claimed_at.isoformat(timespec='seconds')}); nothing was written: try "
            "again when it has finished"
        )
    parent = head.claim_id if head is not None else ""
    if head is not None and head.claim_id not in released:
        logger.warning(
            "period %s: taking over a claim not released for %s (%s): its writer stopped",
            period,
            now - head.claimed_at,
            head.action,
        )
    mine = uuid.uuid4().hex
    store.insert_columns(
        "period_claims",
        [[period], [parent], [mine], ["claimed"], [action], [now]],
        CLAIM_COLUMNS,
        # synchronous: an async insert is not deduplicated by default (a user profile may
        # turn async_insert on), and then two claims could both win
        settings={
            "async_insert": 0,
            "insert_deduplicate": 1,
            "insert_deduplication_token": f"{period}|{parent}",
        },
    )
    winner = _chain(store, period)[0].get(parent)
    if winner is None or winner.claim_id != mine:
        raise PeriodBusyError(
            f"period {period} was changed by another process at the same time "
            f"({winner.action if winner else 'unknown'}); nothing was written: run again "
            "to see its result"
        )
    try:
        yield mine
    finally:
        store.insert_columns(
            "period_claims",
            [[period], [parent], [mine], ["released"], [action], [datetime.now(UTC)]],
            CLAIM_COLUMNS,
            settings={"insert_deduplication_token": f"{period}|{mine}|released"},
        )
