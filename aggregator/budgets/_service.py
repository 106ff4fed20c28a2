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

from meterline.aggregator.budgets import _cost
from meterline.aggregator.budgets._ledger import Ledger, Reservation, new_id
from meterline.aggregator.budgets._model import TOKENS, Budget, BudgetState, shown
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

    def to_dict(self) -> dict[str, Any]:
        from meterline.aggregator._instants import iso

        tokens = self.unit == TOKENS
        amount = None if self.amount is None else shown(self.amount, tokens)
        if self.allowed:
            r = self.reservation
            same_unit = [
                s for s in self.states if s.budget.mode == "hard" and s.budget.unit == self.unit
            ]
            headroom = min((s.remaining for s in same_unit), default=None)
            return {
                "allowed": True,
                "id": r.id if r else None,
                "amount": amount,
                "unit": self.unit,
                "expires_at": iso(r.expires_at) if r else None,
                "budgets": [s.to_dict() for s in self.states],
                "cache_ttl_seconds": CACHE_TTL_SECONDS,
                "headroom": None if headroom is None else shown(headroom, tokens),
            }
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
    ) -> None:
        self.store = store
        self.config = config
        self.registry = Registry(store, config, currency=currency)
        kwargs = {"clock": clock} if clock is not None else {}
        self.ledger = Ledger(store, snapshot_seconds=snapshot_seconds, **kwargs)
        self._pending: list[Reservation] = []

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

    def _state(self, snap: Any, b: Budget, start: datetime, end: datetime) -> BudgetState:
        used = self.ledger.used(b, start, end)
        settled = self.ledger.settled_in(b, start, end)
        return BudgetState(
            budget=b,
            period_start=start,
            period_end=end,
            spent=snap.spent[(*b.key, start)] + settled,
            reserved=used - settled,
        )

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
            with self.ledger.lock:
                self._expire(consumer, now)
                for b, s, e in spans:
                    out[b.key] = self._state(snap, b, s, e)
        self._flush()
        return [out[b.key] for b in budgets]

    def budgets_for(
        self, pricing: Pricing, consumer: str, feature: str | None
    ) -> list[BudgetState]:
        """Every budget that applies to a call of ``consumer``/``feature``, with its state
        (``fits(amount)`` tells whether an amount in its unit fits)."""
        return self.states(pricing, self.registry.applicable(consumer, feature), fresh=False)

    def _expire(self, consumer: str, now: datetime) -> None:
        """End expired reservations (lock held); :meth:`_flush` writes them."""
        self._pending.extend(self.ledger.expire(consumer, now))

    def _flush(self) -> None:
        with self.ledger.lock:
            pending, self._pending = self._pending, []
        if pending:
            self.ledger.persist(pending)

    # --- reserve / settle / release ---------------------------------------------------

    def reserve(self, pricing: Pricing, req: ReserveRequest) -> Decision:
        """Reserve ``req``'s worst case against every budget that applies, atomically.

        Raises:
            ReservationError: the request is invalid (e.g. no ``max_tokens`` and no
                output limit known for the model).
        """
        now = self.now()
        budgets = self.registry.applicable(req.consumer, req.feature)
        if not budgets:
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
        snap = self._snapshot(pricing, req.consumer, spans)
        with self.ledger.lock:
            self._expire(req.consumer, now)
            states = [self._state(snap, b, s, e) for b, s, e in spans]
            blocking, reason = self._blocking(states, cost)
            reservation = None
            if blocking is None:
                reservation = Reservation(
                    id=new_id(), consumer=req.consumer, feature=req.feature,
                    provider=req.provider, model=req.model, money=cost.money,
                    tokens=cost.tokens, status="reserved", created_at=now,
                    expires_at=now + timedelta(seconds=ttl),
                )  # fmt: skip
                self.ledger.add(reservation)
                states = [self._state(snap, b, s, e) for b, s, e in spans]
        self._flush()
        unit = self._unit(budgets)
        amount = cost.amount(unit == "tokens") if unit else cost.money
        if blocking is not None:
            return Decision(
                False, states=states, amount=amount, unit=unit, blocking=blocking,
                reason=reason, degrade=self._degrade(pricing, req, blocking, states, now),
            )  # fmt: skip
        self.ledger.persist([reservation])  # type: ignore[list-item]
        return Decision(True, reservation, states, amount, unit)

    @staticmethod
    def _unit(budgets: list[Budget]) -> str | None:
        money = [b.unit for b in budgets if not b.in_tokens]
        return money[0] if money else "tokens"

    @staticmethod
    def _blocking(
        states: list[BudgetState], cost: _cost.Cost
    ) -> tuple[BudgetState | None, str | None]:
        for state in states:
            if state.budget.mode != "hard":
                continue
            amount = cost.amount(state.budget.in_tokens)
            if amount is None:
                return state, "the model has no price: its cost cannot be checked"
            if amount > state.remaining:
                return state, "the worst case does not fit"
        return None, None

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
        """Replace the reservation's worst case by the actual cost of ``usage``.

        Idempotent: a reservation already settled, released, expired or counted is left
        as it is. Returns the reservation's status afterwards.

        Raises:
            UnknownReservation: no such reservation (or another consumer's).
        """
        with self.ledger.lock:
            r = self.ledger.find(rid)
        if r is None or (consumer is not None and r.consumer != consumer):
            return self._ended_status(rid, consumer)
        if r.status != "reserved":
            return r.status
        cost = _cost.actual(
            pricing, consumer=r.consumer, provider=r.provider, model=model or r.model,
            usage=usage, at=r.created_at,
        )  # fmt: skip
        with self.ledger.lock:
            current = self.ledger.find(rid)
            if current is None or current.status != "reserved":
                return current.status if current else self._ended_status(rid, consumer)
            updated = self.ledger.update(
                replace(current, status="settled", money=cost.money, tokens=cost.tokens,
                        model=model or current.model)
            )  # fmt: skip
        self.ledger.persist([updated])
        return "settled"

    def release(self, rid: str, *, consumer: str | None = None) -> str:
        """Drop a reservation whose call was not sent (or failed without usage)."""
        with self.ledger.lock:
            r = self.ledger.find(rid)
            if r is None or (consumer is not None and r.consumer != consumer):
                updated = None
            elif r.status == "reserved":
                updated = self.ledger.update(replace(r, status="released"))
            else:
                return r.status
        if updated is None:
            return self._ended_status(rid, consumer)
        self.ledger.persist([updated])
        return "released"

    def _ended_status(self, rid: str, consumer: str | None) -> str:
        """The status of a reservation that is not live: ended here, or in the store
        (an earlier run). Another consumer's reservation is unknown to the caller."""
        with self.ledger.lock:
            found = self.ledger.ended(rid)
        if found is None:
            found = self.ledger.stored_status(rid)
        if found is None or (consumer is not None and found[1] != consumer):
            raise UnknownReservation(rid)
        status, _ = found
        if status in ("reserved", "settled"):  # live in the store, not here: another run's
            raise UnknownReservation(rid)
        return status


def utcnow() -> datetime:
    return datetime.now(UTC)
