"""The alert service: find crossings, record each once, deliver each to its webhooks.

Where crossings are found (docs/alerts.md): ``meterline serve`` runs :class:`AlertLoop`,
which checks every budget and rolling rule

- right after each rating run that changed the money table (``RatingLoop``'s
  ``on_rated``: new, late or re-rated usage),
- right after a reservation is settled (``POST /v1/reservations/{id}/settle``: a settled
  reservation's actual cost counts as spent before its span is stored),
- and every ``alerts.check_interval`` (default 60 s) in any case (periods roll over,
  budgets change through the API).

Pokes are coalesced: one check at a time, at most one a second. Deliveries due are sent
after each check and whenever one falls due.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from meterline.aggregator.alerts import _webhooks
from meterline.aggregator.alerts._detect import budget_crossings
from meterline.aggregator.alerts._model import RATE_LIMIT_REPEATED, Alert, digest_id
from meterline.aggregator.alerts._outbox import DELIVERED, FAILED, PENDING, Delivery, Outbox
from meterline.aggregator.alerts._refusals import Refusals
from meterline.aggregator.alerts._rolling import Cache, rolling_crossings
from meterline.store import Store

logger = logging.getLogger(__name__)

REPAIR_WINDOW = timedelta(days=7)
"""How far back a restart looks for planned deliveries a crash left unwritten."""


class AlertService:
    """Alerts over one store, with the ``alerts:`` section of the configuration file."""

    def __init__(
        self,
        store: Store,
        config: Any,
        *,
        pricing: Callable[[], Any],
        budgets: Callable[[], Any] | None = None,
        currency: str = "USD",
        clock: Callable[[], datetime] | None = None,
        current: Callable[[], Any] | None = None,
    ) -> None:
        """Args:
        config: the ``alerts`` section (:class:`meterline.config._alerts.AlertsSection`).
        pricing: returns the pricing in force.
        budgets: returns the app's :class:`~meterline.aggregator.budgets.BudgetService`.
        clock: the time now (tests); default: the budget service's, else the wall clock.
        current: returns the section in force now (a reloaded configuration file).
        """
        self.store = store
        self._config = config
        self._current = current
        self.pricing = pricing
        self.budgets = budgets
        self.currency = currency
        self._clock = clock
        self.outbox = Outbox(store)
        self._check_lock = threading.Lock()
        self._http = httpx.Client(follow_redirects=False)
        self._refusals: Refusals | None = None
        self._calls: Cache = {}
        """Per-call money of rolling rules' hours near their limit, kept between checks."""
        self.own_ports: frozenset[int] = frozenset()
        """This aggregator's listening ports (``meterline serve`` sets them): a webhook
        URL that points at one of them on this machine is refused."""
        self._own: dict[str, int | None] = {}
        self.owner = uuid.uuid4().hex
        """This process's name in delivery claims."""
        self._resting: dict[str, datetime] = {}
        self._attempts: dict[str, threading.Event] = {}
        self.last_error: str | None = None

    @property
    def config(self) -> Any:
        """The ``alerts`` section in force."""
        return self._current() if self._current is not None else self._config

    def now(self) -> datetime:
        if self._clock is not None:
            return self._clock()
        service = self.budgets() if self.budgets is not None else None
        return service.now() if service is not None else datetime.now(UTC)

    def urls_for(self, kind: str) -> list[str]:
        return [w.url for w in self.config.webhooks if kind in w.events]

    # --- finding and recording ------------------------------------------------------

    def check(self, *, consumers: set[str] | None = None) -> list[Alert]:
        """Find every crossing now and record the new ones (with their deliveries)."""
        with self._check_lock:
            pricing = self.pricing()
            found: list[Alert] = []
            service = self.budgets() if self.budgets is not None else None
            if service is not None:
                found += budget_crossings(service, pricing, consumers=consumers)
            rules = [r for r in self.config.rolling
                     if consumers is None or r.consumer in consumers]  # fmt: skip
            found += rolling_crossings(self.store, pricing, rules, self.now(),
                                       currency=self.currency, cache=self._calls)  # fmt: skip
            new = self.outbox.record(found, self.urls_for)
        for a in new:
            logger.info("alert %s: %s %s%s at %s of %s %s (%s)", a.id, a.kind, a.consumer,
                        f"/{a.feature}" if a.feature else "", a.spent, a.limit, a.unit,
                        f"{a.threshold}%" if a.threshold else a.period)  # fmt: skip
        return new

    def raise_alert(self, kind: str, *, consumer: str, key: str, period_start: datetime,
                    period_end: datetime, limit: Decimal, unit: str, spent: Decimal,
                    feature: str | None = None, data: dict[str, Any] | None = None,
                    ) -> Alert | None:  # fmt: skip
        """Record an alert of another kind (the hook for rate limits hit repeatedly,
        ``rate_limit.repeated``): once per (``kind``, ``consumer``, ``feature``, ``key``).
        Returns it when it is new."""
        alert = Alert(
            id=digest_id("alt", kind, consumer, feature or "", key), kind=kind,
            consumer=consumer, feature=feature, period=key, period_start=period_start,
            period_end=period_end, threshold="", limit=limit, unit=unit, spent=spent,
            created_at=self.now(), data=data or {},
        )  # fmt: skip
        new = self.outbox.record([alert], self.urls_for)
        return new[0] if new else None

    @property
    def refusals(self) -> Refusals:
        """The shared refusal counts: in Redis with the Redis ledger, else in the store."""
        if self._refusals is None:
            service = self.budgets() if self.budgets is not None else None
            ledger = getattr(service, "ledger", None)
            redis = getattr(ledger, "client", None)
            prefix = getattr(ledger, "prefix", "meterline")
            self._refusals = Refusals(self.store, redis, prefix=prefix)
        return self._refusals

    def rate_limited(self, limit: Any, *, used: Decimal | None = None) -> Alert | None:
        """Count one refusal by the rate limit ``limit``; the ``rate_limit_refusals``-th
        within one UTC hour records a ``rate_limit.repeated`` alert (once per limit and
        hour). The count is shared (:mod:`._refusals`): every replica's refusals and a
        restarted process's add up."""
        now = self.now()
        hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        key = "/".join(limit.key)
        counts = self.refusals
        if counts.done(key, now):
            return None
        count = counts.count(key, now)
        wanted = self.config.rate_limit_refusals
        if count < wanted:
            return None
        if counts.redis is not None and count > wanted:
            counts.mark_done(key, now)  # Redis: exactly one refusal saw the N-th count
            return None
        alert = self.raise_alert(
            RATE_LIMIT_REPEATED, consumer=limit.consumer,
            key=f"{key}@{hour.isoformat()}", period_start=hour,
            period_end=hour + timedelta(hours=1), limit=limit.limit, unit=limit.unit,
            spent=used if used is not None else Decimal(0),
            data={"refusals": count, "per": limit.per, "provider": limit.provider,
                  "model": limit.model},
        )  # fmt: skip
        counts.mark_done(key, now)
        return alert

    # --- delivering ------------------------------------------------------------------

    def _webhook(self, url: str) -> Any:
        return next((w for w in self.config.webhooks if w.url == url), None)

    def deliver(self, *, stop: threading.Event | None = None) -> datetime | None:
        """Attempt every pending delivery that is due; returns when the next falls due.

        A webhook that fails an attempt (an error status, no answer within the deadline)
        is not tried again before that delivery's retry: its other due deliveries wait
        for it too, so a webhook that hangs costs one deadline per retry, not one per
        pending delivery, and never holds up the other webhooks."""
        now = datetime.now(UTC)
        retry = self.config.retry
        upcoming: datetime | None = None
        for d in self.outbox.deliveries(state=PENDING):
            if stop is not None and stop.is_set():
                break
            due = max(d.next_at, self._resting.get(d.url, d.next_at))
            if due > now or not self._idle(d.url):
                upcoming = due if upcoming is None else min(upcoming, due)
                continue
            hook = self._webhook(d.url)
            secret = os.environ.get(hook.secret_variable, "") if hook is not None else ""
            own = self._own_port(d.url) if hook is not None else None
            if hook is None or not secret or own is not None:
                why = ("webhook no longer configured" if hook is None else "secret not set"
                       if not secret else f"refused: the URL points at this aggregator's "
                       f"own listener on port {own}")  # fmt: skip
                self.outbox.write([d.moved(FAILED, attempts=d.attempts, error=why)])
                continue
            claimed = self.outbox.claim(d, self.owner)
            if claimed is None:
                continue  # another replica makes this attempt
            d = claimed
            kind = _kind_of(d)
            error, ended = _webhooks.post_within(
                self._http, d.url, secret=secret, body=d.payload, delivery=d.id, kind=kind
            )
            self._attempts[d.url] = ended
            attempts = d.attempts + 1
            if error is None:
                self._resting.pop(d.url, None)
                self.outbox.write([d.moved(DELIVERED, attempts=attempts)])
                logger.info("alert delivery %s to %s: delivered", d.id, d.url)
                continue
            wait = _webhooks.backoff(attempts, initial=retry.initial, most=retry.max)
            at = datetime.now(UTC) + wait
            self._resting[d.url] = at  # the webhook's other deliveries wait for it too
            upcoming = at if upcoming is None else min(upcoming, at)
            if attempts >= retry.attempts:
                self.outbox.write([d.moved(FAILED, attempts=attempts, error=error)])
                logger.warning("alert delivery %s to %s failed after %d attempts: %s",
                               d.id, d.url, attempts, error)  # fmt: skip
            else:
                self.outbox.write([d.moved(PENDING, attempts=attempts, next_at=at, error=error)])
                logger.info("alert delivery %s to %s: %s; retry in %.1fs", d.id, d.url,
                            error, wait.total_seconds())  # fmt: skip
        return upcoming

    def _idle(self, url: str) -> bool:
        """No attempt to ``url`` is still running (one abandoned at its deadline)."""
        ended = self._attempts.get(url)
        return ended is None or ended.is_set()

    def _own_port(self, url: str) -> int | None:
        """The own listener's port ``url`` points at (cached per URL), else ``None``."""
        if not self.own_ports:
            return None
        if url not in self._own:
            self._own[url] = _webhooks.points_at(url, self.own_ports)
        return self._own[url]

    def close(self) -> None:
        self._http.close()


def _kind_of(d: Delivery) -> str:
    import json

    try:
        return str(json.loads(d.payload)["type"])
    except (ValueError, KeyError, TypeError):
        return "unknown"


class AlertLoop:
    """The alert threads of ``meterline serve``: one checks on pokes and every interval,
    the other delivers what is due — a long check (a rolling rule at its limit) never
    delays a delivery, and a webhook that hangs never delays a check. :meth:`stop` ends
    both after the check or attempt in progress."""

    MIN_GAP_S = 1.0

    def __init__(self, service: AlertService) -> None:
        self.service = service
        self.interval = service.config.check_interval.total_seconds()
        self.checks = 0
        self._poke = threading.Event()
        self._deliver = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="meterline-alerts", daemon=True)
        self._sender = threading.Thread(target=self._send, name="meterline-alerts-send",
                                        daemon=True)  # fmt: skip

    def start(self) -> None:
        self._thread.start()
        self._sender.start()

    def poke(self) -> None:
        """Check soon (spent changed)."""
        self._poke.set()

    def rate_limited(self, limit: Any, *, used: Decimal | None = None) -> None:
        """A reserve was refused by ``limit`` (the reserve route): counted, and alerted
        when repeated; never raises into the request."""
        try:
            if self.service.rate_limited(limit, used=used) is not None:
                self._deliver.set()  # deliver it now
        except Exception as exc:
            logger.warning("alerts: a rate-limit refusal was not counted: %s", exc)

    def stop(self, timeout: float = 30.0) -> bool:
        self._stop.set()
        self._poke.set()
        self._deliver.set()
        deadline = time.monotonic() + timeout
        for thread in (self._thread, self._sender):
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        self.service.close()
        return not (self._thread.is_alive() or self._sender.is_alive())

    def _main(self) -> None:
        last_check = -1e18
        while not self._stop.is_set():
            if time.monotonic() - last_check >= self.interval or self._poke.is_set():
                self._poke.clear()
                last_check = time.monotonic()
                if self._guard("check", self.service.check):
                    self._deliver.set()  # new alerts: send them now
                self.checks += 1
            wait = self.interval - (time.monotonic() - last_check)
            if self._stop.wait(self.MIN_GAP_S):
                break
            self._poke.wait(max(0.0, wait - self.MIN_GAP_S))

    def _send(self) -> None:
        try:
            repaired = self.service.outbox.repair(datetime.now(UTC) - REPAIR_WINDOW)
            if repaired:
                logger.info("alerts: %d planned deliveries written after a crash", repaired)
        except Exception as exc:
            logger.warning("alerts: repair failed: %s", exc)
        while not self._stop.is_set():
            self._deliver.clear()
            upcoming = self._guard("delivery", lambda: self.service.deliver(stop=self._stop))
            wait = self.interval
            if upcoming is not None:
                wait = min(wait, (upcoming - datetime.now(UTC)).total_seconds())
            if self._stop.wait(min(self.MIN_GAP_S, max(0.05, wait))):
                break
            self._deliver.wait(max(0.0, wait - self.MIN_GAP_S))

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
            self.service.last_error = None
            return result
        except Exception as exc:  # keep going: the next round retries
            if str(exc) != self.service.last_error:
                logger.warning("alerts: %s failed (retried): %s", what, exc, exc_info=True)
            self.service.last_error = str(exc)
            return None
