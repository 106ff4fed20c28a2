"""The budget service: budget states, and reserve / settle / release (docs/budgets.md).

:meth:`BudgetService.budgets_for` and :meth:`BudgetState.fits` are what the estimate
endpoint asks ("does the worst case fit each budget that applies").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal, localcontext
from typing import Any

from meterline.aggregator.budgets import _cost, _lease
from meterline.aggregator.budgets._ledger import Check, Ledger, Reservation, new_id
from meterline.aggregator.budgets._model import TOKENS, Budget, BudgetState, shown
from meterline.aggregator.budgets._rates import RateCheck, RateLimit
from meterline.aggregator.budgets._registry import BudgetsConfig, Registry
from meterline.aggregator.budgets._spent import counted_reservations, spent
from meterline.aggregator.budgets._window import window
from meterline.aggregator.pricing import MONEY_CONTEXT, Pricing
from meterline.errors import MeterlineError
from meterline.store import Store

logger = logging.getLogger(__name__)

CACHE_TTL_SECONDS = 5
"""How long the app's guard may reuse an answer far from every limit (contract)."""


class ReservationError(MeterlineError, ValueError):
    """A reservation request is invalid (the API answers 422)."""


class UnknownReservation(MeterlineError, LookupError):
    """No such reservation (the API answers 404)."""


@dataclass(frozen=True)
class ReserveRequest:
    consumer: str
    feature: str | None
    provider: str
    model: str
    input_tokens: int
    max_tokens: int | None = None
    ttl_seconds: int | None = None
    lease: bool = False
    """Ask for a lease (:mod:`._lease`) when the call is far from every limit."""


@dataclass(frozen=True)
class Decision:
    """The answer to a reserve."""

    allowed: bool
    reservation: Reservation | None = None
    states: list[BudgetState] = field(default_factory=list)
    """Every budget that applies, after this reservation."""
    amount: Decimal | None = None
    unit: str | None = None
    blocking: BudgetState | None = None
    reason: str | None = None
    degrade: dict[str, Any] | None = None
    rate: RateCheck | None = None
    """The rate limit that refused the call (``policy: rate_limited``)."""
    rate_used: Decimal | None = None
    retry_after: float | None = None
    lease: dict[str, Any] | None = None
    """The lease granted (the reservation is the lease; the call is its call 1)."""

    def _rate_dict(self) -> dict[str, Any]:
        rc = self.rate
        assert rc is not None
        limit = rc.limit
        whole = not limit.in_money
        used = self.rate_used if self.rate_used is not None else Decimal(0)
        return {
            "allowed": False,
            "policy": "rate_limited",
            "reason": self.reason,
            "retry_after": None if self.retry_after is None else round(self.retry_after, 3),
            "rate_limit": limit.to_dict() | {
                "used": shown(used, whole), "remaining": shown(limit.limit - used, whole),
            },
            "estimate": shown(rc.amount, whole),
            "unit": limit.unit,
            "budget": None,
            "degrade": None,
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        from meterline.aggregator._instants import iso

        if self.rate is not None:
            return self._rate_dict()
        tokens = self.unit == TOKENS
        amount = None if self.amount is None else shown(self.amount, tokens)
        if self.allowed:
            r = self.reservation
            same_unit = [
                s for s in self.states if s.budget.mode == "hard" and s.budget.unit == self.unit
            ]
            headroom = min((s.remaining for s in same_unit), default=None)
            out = {
                "allowed": True,
                "id": r.id if r else None,
                "amount": amount,
                "unit": self.unit,
                "expires_at": iso(r.expires_at) if r else None,
                "budgets": [s.to_dict() for s in self.states],
                "cache_ttl_seconds": CACHE_TTL_SECONDS,
                "headroom": None if headroom is None else shown(headroom, tokens),
            }
            if self.lease is not None and r is not None:
                out["id"] = _lease.call_id(r.id, 1)
                out["lease"] = self.lease
            return out
        assert self.blocking is not None
        return {
            "allowed": False,
            "policy": self.blocking.budget.policy,
            "reason": self.reason,
            "budget": self.blocking.to_dict(),
            "estimate": amount,
            "unit": self.unit,
            "degrade": self.degrade,
        }


class BudgetService:
    """Budgets over one store, with this process's reservation ledger."""

    def __init__(
        self,
        store: Store,
        config: BudgetsConfig,
        *,
        currency: str,
        snapshot_seconds: float = 1.0,
        clock: Any = None,
        redis_url: str | None = None,
    ) -> None:
        """``redis_url``: share the reservations with other replicas through Redis
        (:mod:`._redis`); ``None``: this process's ledger (the embedded deployment)."""
        self.store = store
        self.config = config
        self.registry = Registry(store, config, currency=currency)
        kwargs: dict[str, Any] = {"snapshot_seconds": snapshot_seconds}
        if clock is not None:
            kwargs["clock"] = clock
        if redis_url:
            from meterline.aggregator.budgets._redis import RedisLedger

            self.ledger: Ledger = RedisLedger(store, redis_url, **kwargs)
        else:
            self.ledger = Ledger(store, **kwargs)

    def now(self) -> datetime:
        return self.ledger.clock()

    # --- states -----------------------------------------------------------------------

    def _windows(
        self, budgets: list[Budget], at: datetime
    ) -> list[tuple[Budget, datetime, datetime]]:
        return [(b, *window(b.period, at, b.timezone)) for b in budgets]

    def _snapshot(
        self,
        pricing: Pricing,
        consumer: str,
        spans: list[tuple[Budget, datetime, datetime]],
        *,
        fresh: bool = False,
    ) -> Any:
        snap, ended = self.ledger.snapshot(
            consumer,
            spans,
            lambda b, s, e: spent(self.store, pricing, b, s, e),
            lambda ids, since: counted_reservations(self.store, ids, since),
            fresh=fresh,
        )
        if ended:
            self.ledger.persist(ended)
        return snap

    def states(
        self, pricing: Pricing, budgets: list[Budget], *, fresh: bool = True
    ) -> list[BudgetState]:
        """The current state of ``budgets`` (read afresh from the store by default)."""
        now = self.now()
        by_consumer: dict[str, list[Budget]] = {}
        for b in budgets:
            by_consumer.setdefault(b.consumer, []).append(b)
        out: dict[tuple[str, str, str], BudgetState] = {}
        for consumer, own in by_consumer.items():
            spans = self._windows(own, now)
            snap = self._snapshot(pricing, consumer, spans, fresh=fresh)
            checks = self._checks(snap, spans, _cost.Cost(Decimal(0), 0))
            totals, ended = self.ledger.reserve(consumer, checks, None)
            if ended:
                self.ledger.persist(ended)
            for state in self._states_of(snap, checks, totals):
                out[state.budget.key] = state
        return [out[b.key] for b in budgets]

    def rate_states(self, rates: list[RateLimit]) -> list[dict[str, Any]]:
        """Each rate limit with what its window ending now holds (``used``, ``remaining``)."""
        from meterline.aggregator.budgets._rates import window_use

        now = self.now()
        by_consumer: dict[str, list[Any]] = {}
        out = []
        for rate in rates:
            if rate.consumer not in by_consumer:
                by_consumer[rate.consumer] = self.ledger.rate_entries(rate.consumer, now)
            used, _, _ = window_use(by_consumer[rate.consumer], RateCheck(rate, Decimal(0)), now)
            whole = not rate.in_money
            out.append(rate.to_dict() | {"used": shown(used, whole),
                                         "remaining": shown(rate.limit - used, whole)})  # fmt: skip
        return out

    def budgets_for(
        self, pricing: Pricing, consumer: str, feature: str | None
    ) -> list[BudgetState]:
        """Every budget that applies to a call of ``consumer``/``feature``, with its state
        (``fits(amount)`` tells whether an amount in its unit fits)."""
        return self.states(pricing, self.registry.applicable(consumer, feature), fresh=False)

    def reserve(self, pricing: Pricing, req: ReserveRequest) -> Decision:
        """Reserve ``req``'s worst case against every budget that applies, atomically.

        Raises:
            ReservationError: the request is invalid (e.g. no ``max_tokens`` and no
                output limit known for the model).
        """
        now = self.now()
        budgets = self.registry.applicable(req.consumer, req.feature)
        rates = self.registry.applicable_rates(req.consumer, req.provider, req.model)
        if not budgets and not rates:
            return Decision(True)
        max_tokens = req.max_tokens
        if max_tokens is None:
            max_tokens = self._output_limit(pricing, req)
        cost = _cost.worst_case(
            pricing, consumer=req.consumer, provider=req.provider, model=req.model,
            input_tokens=req.input_tokens, max_tokens=max_tokens, at=now,
        )  # fmt: skip
        ttl = req.ttl_seconds or self.config.ttl_seconds
        if not 1 <= ttl <= self.config.max_ttl_seconds:
            raise ReservationError(
                f"ttl_seconds {ttl} must be between 1 and {self.config.max_ttl_seconds}"
            )
        spans = self._windows(budgets, now)
        # rate limits alone need nothing of the store
        snap = self._snapshot(pricing, req.consumer, spans) if budgets else None
        unpriced = next((b for b in budgets if b.mode == "hard" and not b.in_tokens
                         and cost.money is None), None)  # fmt: skip
        rate_checks = [RateCheck(r, r.amount(cost.tokens, cost.money)) for r in rates]
        if unpriced is None and cost.money is None:
            money_rate = next((rc for rc in rate_checks if rc.limit.in_money), None)
            if money_rate is not None:
                return Decision(
                    False, amount=cost.amount(False), unit=money_rate.limit.unit,
                    reason="the model has no price: its cost cannot be checked against "
                    "the rate limit", rate=money_rate,
                )  # fmt: skip
        candidate = None
        if unpriced is None:
            candidate = Reservation(
                id=new_id(), consumer=req.consumer, feature=req.feature,
                provider=req.provider, model=req.model, money=cost.money,
                tokens=cost.tokens, status="reserved", created_at=now,
                expires_at=now + timedelta(seconds=ttl),
            )  # fmt: skip
        checks = self._checks(snap, spans, cost)
        if req.lease and candidate is not None and not rates and max_tokens == req.max_tokens:
            granted = self._lease(pricing, req, snap, spans, checks, cost, candidate)
            if granted is not None:
                return granted
        totals, ended = self.ledger.reserve(req.consumer, checks, candidate, rate_checks)
        if ended:
            self.ledger.persist(ended)
        states = self._states_of(snap, checks, totals)
        unit = self._unit(budgets) if budgets else self._rate_unit(rates)
        amount = cost.amount(unit == TOKENS)
        if totals.rate_blocking is not None:
            rc = rate_checks[totals.rate_blocking]
            why = "it alone exceeds" if totals.retry_after is None else "the window is full for"
            return Decision(
                False, states=states, amount=amount, unit=unit,
                reason=f"{why} the rate limit of {rc.limit.limit} {rc.limit.unit} per "
                f"{rc.limit.per}", rate=rc, rate_used=totals.rate_used[totals.rate_blocking],
                retry_after=totals.retry_after,
            )  # fmt: skip
        if unpriced is not None or totals.blocking is not None:
            if unpriced is not None:
                blocking = states[budgets.index(unpriced)]
                reason = "the model has no price: its cost cannot be checked"
            else:
                blocking = states[totals.blocking]  # type: ignore[index]
                reason = "the worst case does not fit"
            return Decision(
                False, states=states, amount=amount, unit=unit, blocking=blocking,
                reason=reason, degrade=self._degrade(pricing, req, blocking, states, now),
            )  # fmt: skip
        self.ledger.persist([candidate])  # type: ignore[list-item]
        return Decision(True, candidate, states, amount, unit)

    def _lease(
        self, pricing: Pricing, req: ReserveRequest, snap: Any,
        spans: list[tuple[Budget, datetime, datetime]], checks: list[Check],
        cost: _cost.Cost, candidate: Reservation,
    ) -> Decision | None:  # fmt: skip
        """Grant a lease sized from the free headroom (:mod:`._lease`), atomically; ``None``:
        too near a limit (or the slice no longer fits): reserve the call alone."""
        totals, ended = self.ledger.reserve(req.consumer, checks, None)
        if ended:
            self.ledger.persist(ended)
        rooms = [
            (c.budget.in_tokens, c.room - used, c.amount)
            for c, used in zip(checks, totals.used, strict=True)
            if c.room is not None
        ]
        part = _lease.size(rooms, cost.money, cost.tokens)
        if part is None:
            return None
        quoted = None
        if cost.money is not None:
            markup = lambda a: _cost._markup(pricing, req.consumer, a)  # noqa: E731
            quoted = _lease.prices(pricing, req.provider, req.model, req.input_tokens,
                                   candidate.created_at, markup)  # fmt: skip
            if quoted is None and part.money is not None:
                return None
        definitions = [b for b, _, _ in spans]
        lease = replace(
            candidate, id=_lease.new_lease_id(_lease.fingerprint(definitions)),
            money=part.money if part.money is not None else Decimal(0),
            tokens=part.tokens if part.tokens is not None else 0,
        )  # fmt: skip
        lease_checks = [
            replace(c, amount=Decimal(lease.tokens) if c.budget.in_tokens else lease.money)
            for c in checks
        ]  # fmt: skip
        totals, ended = self.ledger.reserve(req.consumer, lease_checks, lease)
        if ended:
            self.ledger.persist(ended)
        if totals.blocking is not None:
            return None
        self.ledger.persist([lease])
        from meterline.aggregator._instants import iso

        unit = self._unit([b for b, _, _ in spans])
        return Decision(
            True, lease, self._states_of(snap, lease_checks, totals),
            cost.amount(unit == TOKENS), unit,
            lease={
                "id": lease.id,
                "money": None if part.money is None else format(part.money, "f"),
                "tokens": part.tokens,
                "prices": None if quoted is None else quoted[0],
                "max_input_tokens": None if quoted is None else quoted[1],
                "use_seconds": _lease.USE_SECONDS,
                "expires_at": iso(lease.expires_at),
            },
        )  # fmt: skip

    def report(
        self, pricing: Pricing, lease_id: str, calls: list[dict[str, Any]], *,
        consumer: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Record the calls made under a lease (``{"n", "usage", "model"}`` each, usage
        validated): each a settled reservation ``<lease>.<n>``, the lease shrunk by them.

        Raises:
            UnknownReservation: no such lease (or another consumer's).
        """
        lease = self.ledger.lease(lease_id, consumer)
        if lease is None or not _lease.is_lease(lease_id):
            status = self.ledger.ended_status(lease_id, consumer)
            if status is None or not _lease.is_lease(lease_id):
                raise UnknownReservation(lease_id)
            return {"id": lease_id, "status": status, "revoked": True, "recorded": 0}
        made = []
        for call in calls:
            settled_model = call.get("model") or lease.model
            money, tokens = self._price(pricing, lease, settled_model, call["usage"])
            made.append(replace(
                lease, id=_lease.call_id(lease_id, call["n"]), status="settled",
                model=settled_model, money=money, tokens=tokens, version=1,
            ))  # fmt: skip
        status, changed = self.ledger.report(lease, made)
        if changed:
            self.ledger.persist(changed)
        current: list[Any] = list(self.registry.applicable(lease.consumer, lease.feature))
        current += self.registry.applicable_rates(lease.consumer, lease.provider, lease.model)
        revoked = status != "reserved" or _lease.fingerprint_of(lease_id) != _lease.fingerprint(
            current
        )
        return {
            "id": lease_id, "status": status or "expired", "revoked": revoked,
            "recorded": max(0, len(changed) - 1),
        }  # fmt: skip

    @staticmethod
    def _checks(
        snap: Any, spans: list[tuple[Budget, datetime, datetime]], cost: _cost.Cost
    ) -> list[Check]:
        checks = []
        for b, s, e in spans:
            spent_ = snap.spent[(*b.key, s)]
            amount = cost.amount(b.in_tokens)
            checks.append(Check(b, s, e, b.limit - spent_ if b.mode == "hard" else None,
                                amount if amount is not None else Decimal(0)))  # fmt: skip
        return checks

    @staticmethod
    def _states_of(snap: Any, checks: list[Check], totals: Any) -> list[BudgetState]:
        return [
            BudgetState(
                budget=c.budget,
                period_start=c.start,
                period_end=c.end,
                spent=snap.spent[(*c.budget.key, c.start)] + settled,
                reserved=used - settled,
            )
            for c, used, settled in zip(checks, totals.used, totals.settled, strict=True)
        ]

    @staticmethod
    def _rate_unit(rates: list[RateLimit]) -> str:
        money = [r.unit for r in rates if r.in_money]
        return money[0] if money else TOKENS

    @staticmethod
    def _unit(budgets: list[Budget]) -> str | None:
        money = [b.unit for b in budgets if not b.in_tokens]
        return money[0] if money else "tokens"

    def _output_limit(self, pricing: Pricing, req: ReserveRequest) -> int:
        catalogue = pricing.catalogue
        model = catalogue.find(req.provider, req.model) if catalogue is not None else None
        window_ = getattr(getattr(model, "info", None), "context_window", None)
        if isinstance(window_, int) and window_ > req.input_tokens:
            return window_ - req.input_tokens
        raise ReservationError(
            f"max_tokens is required for {req.provider}/{req.model}: "
            "no output limit is known for it"
        )

    def _degrade(
        self, pricing: Pricing, req: ReserveRequest, blocking: BudgetState,
        states: list[BudgetState], now: datetime,
    ) -> dict[str, Any] | None:  # fmt: skip
        policy = blocking.budget.degrade
        if blocking.budget.policy != "degrade" or policy is None:
            return None
        out: dict[str, Any] = {"max_tokens": None, "model": policy.model.get(req.model)}
        if policy.max_tokens:
            out["max_tokens"] = self._max_tokens_that_fit(pricing, req, states, now)
        return out

    def _max_tokens_that_fit(
        self, pricing: Pricing, req: ReserveRequest, states: list[BudgetState], now: datetime
    ) -> int | None:
        """The largest ``max_tokens`` whose worst case fits every hard budget."""
        prices = _cost.unit_prices(pricing, req.provider, req.model, req.input_tokens, now)
        best: int | None = None
        for state in states:
            if state.budget.mode != "hard":
                continue
            if state.budget.in_tokens:
                room = int(state.remaining) - req.input_tokens
            else:
                if prices is None or "input" not in prices or "output" not in prices:
                    return None
                base = _cost.worst_case(
                    pricing, consumer=req.consumer, provider=req.provider, model=req.model,
                    input_tokens=req.input_tokens, max_tokens=0, at=now,
                ).money  # fmt: skip
                per_token = _cost.output_price(pricing, consumer=req.consumer, prices=prices)
                with localcontext(MONEY_CONTEXT):
                    left = state.remaining - (base or Decimal(0))
                    room = (
                        int((left / per_token).to_integral_value(ROUND_FLOOR)) if per_token else 0
                    )
            best = room if best is None else min(best, room)
        return best if best is not None and best > 0 else None

    def settle(
        self, pricing: Pricing, rid: str, *, usage: dict[str, int], model: str | None,
        consumer: str | None = None,
    ) -> str:  # fmt: skip
        """Replace the reservation's worst case by the actual cost of ``usage`` (the price
        at the reservation's time, ``model`` when given and priced, else the reserved
        model's: an unpriced name never makes a call cost nothing).

        Idempotent: a reservation already settled, released, expired or counted is left
        as it is. Returns the reservation's status afterwards.

        Raises:
            UnknownReservation: no such reservation (or another consumer's).
        """

        def price(r: Reservation, settled_model: str) -> tuple[Decimal | None, int]:
            return self._price(pricing, r, settled_model, usage)

        status, updated = self.ledger.settle(rid, consumer, price, model)
        return self._finish(rid, consumer, status, updated)

    @staticmethod
    def _price(
        pricing: Pricing, r: Reservation, settled_model: str, usage: dict[str, int]
    ) -> tuple[Decimal | None, int]:
        cost = _cost.actual(pricing, consumer=r.consumer, provider=r.provider,
                            model=settled_model, usage=usage, at=r.created_at)  # fmt: skip
        if cost.money is None and settled_model != r.model:
            # a settled model without a price would make the call free until its span
            # is stored: price it as the model whose worst case was reserved
            logger.warning(
                "budgets: settle of %s names model %r, which has no price; priced as "
                "the reserved %r", r.id, settled_model, r.model,
            )  # fmt: skip
            cost = _cost.actual(pricing, consumer=r.consumer, provider=r.provider,
                                model=r.model, usage=usage, at=r.created_at)  # fmt: skip
        return cost.money, cost.tokens

    def release(self, rid: str, *, consumer: str | None = None) -> str:
        """Drop a reservation whose call was not sent (or failed without usage)."""
        status, updated = self.ledger.release(rid, consumer)
        return self._finish(rid, consumer, status, updated)

    def _finish(
        self, rid: str, consumer: str | None, status: str | None, updated: Reservation | None
    ) -> str:
        if updated is not None:
            self.ledger.persist([updated])
        if status is None:
            status = self.ledger.ended_status(rid, consumer)
        if status is None:
            raise UnknownReservation(rid)
        return status


def utcnow() -> datetime:
    return datetime.now(UTC)
