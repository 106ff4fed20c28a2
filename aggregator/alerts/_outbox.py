"""The alert store and its outbox: each alert recorded once, each delivery resumable.

Contract:
- :meth:`Outbox.record` writes the alerts not stored yet (one insert, deterministic ids)
  and, right after, one ``pending`` delivery row per webhook subscribed to the kind (one
  insert). Both happen before any attempt to send. A crash between the two inserts is
  repaired by :meth:`Outbox.repair` (each alert names the webhooks it was planned for).
- A delivery moves ``pending`` → ``delivered`` (a 2xx answer) or ``failed`` (its attempts
  ran out, or its webhook left the configuration); each attempt writes the row again
  (``Version``: nanoseconds), so a restart resumes the pending ones at their ``NextAt``.
- One process checks and records at a time (a lock); with several replicas on one
  ClickHouse server, two may record the same alert at once — the store keeps one row
  per id, and both plan the same delivery ids (identical pending rows).
- Each attempt is claimed first (:meth:`Outbox.claim`): of several replicas that find
  the same delivery due, one sends it; a claim whose process died is taken over after
  :data:`CLAIM_LEASE`. A row's ``Version`` always exceeds the one it replaces, so a
  replica whose clock is behind cannot bring back an older state.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from meterline.aggregator.alerts._model import Alert, delivery_id
from meterline.aggregator.tenancy import Scope
from meterline.store import Store

CLAIM_LEASE = timedelta(seconds=60)
"""How long a claimed attempt blocks other processes (its own ends within the webhook
deadline, then its outcome is written)."""

CLAIMS_SQL = """
SELECT Round, Owner, ClaimedAt FROM {db}.alert_delivery_claims
WHERE DeliveryId = {id:String} AND Attempt = {attempt:UInt32}
ORDER BY Round, ClaimedAt, Owner
"""

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

ALERT_COLUMNS = ("Id", "Kind", "ConsumerId", "Feature", "Period", "PeriodStart", "PeriodEnd",
                 "Threshold", "LimitAmount", "Unit", "Spent", "Data", "Webhooks",
                 "CreatedAt")  # fmt: skip
DELIVERY_COLUMNS = ("Id", "AlertId", "Url", "Version", "State", "Attempts", "NextAt",
                    "LastError", "Payload", "ChangedAt")  # fmt: skip

_SELECT_ALERTS = """
SELECT Id, Kind, ConsumerId, Feature, Period, PeriodStart, PeriodEnd, Threshold, LimitAmount,
       Unit, Spent, Data, CreatedAt
FROM {db}.alerts FINAL
WHERE {where}
ORDER BY CreatedAt DESC, Id
LIMIT {limit:UInt32}
"""


@dataclass(frozen=True)
class Delivery:
    """One delivery of one alert to one webhook, in its newest state."""

    id: str
    alert_id: str
    url: str
    state: str
    attempts: int
    next_at: datetime
    last_error: str
    payload: bytes
    version: int = 0
    """The stored row's ``Version`` (0: not stored yet)."""

    def moved(self, state: str, *, attempts: int, next_at: datetime | None = None,
              error: str = "") -> Delivery:  # fmt: skip
        return Delivery(self.id, self.alert_id, self.url, state, attempts,
                        next_at or self.next_at, error, self.payload, self.version)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        from meterline.aggregator._instants import iso

        return {"id": self.id, "url": self.url, "state": self.state,
                "attempts": self.attempts, "next_at": iso(self.next_at),
                "last_error": self.last_error or None}  # fmt: skip


def _utc(value: Any) -> datetime:
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


class Outbox:
    """The ``alerts`` and ``alert_deliveries`` tables of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.Lock()

    # --- alerts ---------------------------------------------------------------------

    def known(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        _, rows = self.store.query(
            "SELECT DISTINCT Id FROM {db}.alerts WHERE Id IN {ids:Array(String)}",
            {"ids": list(ids)},
        )
        return {str(r[0]) for r in rows}

    def record(self, alerts: Iterable[Alert], urls_for: Any) -> list[Alert]:
        """Store the alerts not stored yet and plan their deliveries; returns the new ones.

        Args:
            urls_for: ``kind → [webhook URL]`` subscribed to that kind.
        """
        unique = {a.id: a for a in alerts}
        with self.lock:
            stored = self.known(list(unique))
            new = [a for i, a in unique.items() if i not in stored]
            if not new:
                return []
            plans = {a.id: [(delivery_id(a.id, u), u) for u in urls_for(a.kind)] for a in new}
            rows = [self._alert_row(a, [u for _, u in plans[a.id]]) for a in new]
            self.store.insert_columns("alerts", [list(c) for c in zip(*rows, strict=True)],
                                      list(ALERT_COLUMNS))  # fmt: skip
            deliveries = [
                Delivery(d, a.id, u, PENDING, 0, a.created_at, "", a.payload(d))
                for a in new for d, u in plans[a.id]
            ]  # fmt: skip
            self.write(deliveries)
        return new

    @staticmethod
    def _alert_row(a: Alert, webhooks: list[str]) -> list[Any]:
        return [a.id, a.kind, a.consumer, a.feature or "", a.period, a.period_start,
                a.period_end, a.threshold, str(a.limit), a.unit, str(a.spent),
                json.dumps({"feature": a.feature, **a.data}, default=str), webhooks,
                a.created_at]  # fmt: skip

    def repair(self, since: datetime) -> int:
        """Write the pending rows of deliveries planned for alerts created since ``since``
        that a crash left unwritten; returns how many."""
        _, rows = self.store.query(
            "SELECT Id, u FROM {db}.alerts FINAL ARRAY JOIN Webhooks AS u "
            "WHERE CreatedAt >= {since:DateTime64(6, 'UTC')}",
            {"since": since},
        )
        planned = {delivery_id(str(a), str(u)): (str(a), str(u)) for a, u in rows}
        if not planned:
            return 0
        _, have = self.store.query(
            "SELECT DISTINCT Id FROM {db}.alert_deliveries WHERE Id IN {ids:Array(String)}",
            {"ids": list(planned)},
        )
        missing = set(planned) - {str(r[0]) for r in have}
        if not missing:
            return 0
        alerts = {a.id: a for a in self.alerts(Scope.ALL, since=since, limit=1_000_000)}
        rows_ = []
        for d in sorted(missing):
            alert_id, url = planned[d]
            a = alerts.get(alert_id)
            if a is not None:
                rows_.append(Delivery(d, a.id, url, PENDING, 0, a.created_at, "", a.payload(d)))
        self.write(rows_)
        return len(rows_)

    def alerts(self, scope: Scope, *, consumer: str | None = None, kind: str | None = None,
               since: datetime | None = None, limit: int = 1000) -> list[Alert]:  # fmt: skip
        """Recorded alerts the scope may see, newest first."""
        params: dict[str, Any] = {"limit": limit}
        where = [scope.condition(params)]
        if consumer is not None:
            params["consumer"] = consumer
            where.append("ConsumerId = {consumer:String}")
        if kind is not None:
            params["kind"] = kind
            where.append("Kind = {kind:String}")
        if since is not None:
            params["since"] = since
            where.append("CreatedAt >= {since:DateTime64(6, 'UTC')}")
        sql = _SELECT_ALERTS.replace("{where}", " AND ".join(where))
        _, rows = self.store.query(sql, params)
        out = []
        for (i, kind_, c, f, period, start, end, threshold, limit_, unit, spent, data,
             created) in rows:  # fmt: skip
            extra = json.loads(data) if data else {}
            extra.pop("feature", None)
            out.append(Alert(str(i), str(kind_), str(c), str(f) or None, str(period),
                             _utc(start), _utc(end), str(threshold), Decimal(limit_),
                             str(unit), Decimal(spent), _utc(created), extra))  # fmt: skip
        return out

    # --- deliveries -----------------------------------------------------------------

    def write(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        now = datetime.now(UTC)
        base = time.time_ns()
        rows = [[d.id, d.alert_id, d.url, max(base + n, d.version + 1), d.state, d.attempts,
                 d.next_at, d.last_error, d.payload.decode(), now]
                for n, d in enumerate(deliveries)]  # fmt: skip
        self.store.insert_columns("alert_deliveries", [list(c) for c in zip(*rows, strict=True)],
                                  list(DELIVERY_COLUMNS))  # fmt: skip

    def deliveries(self, *, state: str | None = None, alert_ids: Sequence[str] | None = None,
                   ids: Sequence[str] | None = None) -> list[Delivery]:  # fmt: skip
        params: dict[str, Any] = {}
        where = ["1"]
        if ids is not None:
            params["ids"] = list(ids)
            where.append("Id IN {ids:Array(String)}")
        if state is not None:
            params["state"] = state
            where.append("State = {state:String}")
        if alert_ids is not None:
            if not alert_ids:
                return []
            params["alerts"] = list(alert_ids)
            where.append("AlertId IN {alerts:Array(String)}")
        _, rows = self.store.query(
            "SELECT Id, AlertId, Url, State, Attempts, NextAt, LastError, Payload, Version "
            f"FROM {{db}}.alert_deliveries FINAL WHERE {' AND '.join(where)} ORDER BY NextAt, Id",
            params,
        )
        return [Delivery(str(i), str(a), str(u), str(s), int(n), _utc(at), str(e),
                         str(p).encode(), int(v))
                for i, a, u, s, n, at, e, p, v in rows]  # fmt: skip

    def claim(self, d: Delivery, owner: str) -> Delivery | None:
        """Claim the next attempt of ``d`` for ``owner``; the delivery as it stands now
        when this process is to make the attempt, ``None`` when another process does
        (or did: it is no longer pending at ``d``'s attempts)."""
        attempt = d.attempts + 1
        params = {"id": d.id, "attempt": attempt}
        _, rows = self.store.query(CLAIMS_SQL, params)
        rounds: dict[int, tuple[str, datetime]] = {}
        for r, who, at in rows:
            rounds.setdefault(int(r), (str(who), _utc(at)))
        now = datetime.now(UTC)
        round_ = 0
        if rounds:
            last = max(rounds)
            who, at = rounds[last]
            if who != owner and now - at < CLAIM_LEASE:
                return None  # another process is making this attempt
            round_ = last if who == owner else last + 1
        if rounds.get(round_, ("",))[0] != owner:
            self.store.insert_columns(
                "alert_delivery_claims",
                [[d.id], [attempt], [round_], [owner], [now]],
                ["DeliveryId", "Attempt", "Round", "Owner", "ClaimedAt"],
                # synchronous and deduplicated: the engine keeps one claim per round
                settings={"async_insert": 0, "insert_deduplicate": 1,
                          "insert_deduplication_token": f"{d.id}|{attempt}|{round_}"},
            )  # fmt: skip
            _, rows = self.store.query(CLAIMS_SQL, params)
            won = [str(who) for r, who, _ in rows if int(r) == round_]
            if not won or won[0] != owner:
                return None
        [now_d] = self.deliveries(ids=[d.id]) or [None]
        if now_d is None or now_d.state != PENDING or now_d.attempts != d.attempts:
            return None  # sent (or moved on) by another process since it was listed
        return now_d
