"""Leases held by this process: calls far from every limit admitted with no round trip.

Contract (the aggregator's side and the sizing: ``aggregator/budgets/_lease.py``):

- A reserve may ask for a lease (``"lease": true``; one ask per (consumer, feature,
  provider, model) at a time, the others reserve per call meanwhile). The aggregator
  grants one only far from every hard limit and when no rate limit applies; the lease is
  a reservation of a slice of headroom, so the atomic bound holds whatever the number of
  processes.
- A call under a lease is admitted locally (:meth:`Leases.take`, no I/O): its worst case —
  input estimate × the lease's worst input price + ``max_tokens`` × its worst output price,
  and input + ``max_tokens`` tokens — is debited from the lease's local balance, and it gets
  its own id ``<lease>.<n>`` (on its span). When it ends, the worst case is replaced by an
  upper bound of its actual (every token at the worst prices: the local balance never
  exceeds what the aggregator still holds for the lease) and its usage is reported, in
  batches, by the outbox thread (``POST /v1/reservations/{lease}/calls``). A call that
  failed without usage gives its whole worst case back and is not reported.
- A lease is used for its ``use_seconds`` (5), then retired; also when a call does not fit
  it, when a report answers ``revoked`` (the budgets or rate limits changed), or when its
  report failed. A retired lease is returned (``DELETE``) once its calls ended and were
  reported — never after a failed report (it then expires on the aggregator, still
  holding its slice: cautious). At exit the held leases are retired and returned within
  the outbox's bounded exit flush; a killed process's lease expires after its TTL.
- In a forked child the parent's leases are dropped (two processes must never spend one
  lease).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

logger = logging.getLogger(__name__)

Key = tuple[str, str | None, str, str]
"""(consumer, feature, provider, model)."""
MAX_BATCH = 500


@dataclass
class Lease:
    id: str
    key: Key
    money: Decimal | None
    """Local balance; ``None``: no hard budget in money."""
    tokens: int | None
    price_in: Decimal
    price_out: Decimal
    max_input: int | None
    use_until: float
    n: int = 0
    in_flight: dict[int, tuple[Decimal, int]] = field(default_factory=dict)
    """Call number → the worst case debited for it."""
    pending: list[dict[str, Any]] = field(default_factory=list)
    scheduled: bool = False
    retired: bool = False
    broken: bool = False
    """A report failed: never return it (it expires on the aggregator)."""
    returned: bool = False

    def worst(self, input_tokens: int, max_tokens: int) -> tuple[Decimal, int]:
        return input_tokens * self.price_in + max_tokens * self.price_out, (
            input_tokens + max_tokens
        )

    def fits(self, money: Decimal, tokens: int) -> bool:
        return (self.money is None or money <= self.money) and (
            self.tokens is None or tokens <= self.tokens
        )


Sender = Callable[[str, dict[str, Any] | None], dict[str, Any]]
Queue = Callable[[Callable[[], None]], None]


class Leases:
    """The leases of one guard (see the module docstring)."""

    def __init__(self, send: Sender, queue: Queue) -> None:
        self._send = send
        self._queue = queue
        self._lock = threading.Lock()
        self._held: dict[Key, Lease] = {}
        self._by_id: dict[str, Lease] = {}
        self._asking: set[Key] = set()
        _ALL.add(self)

    # -- before a call (the app's thread; no I/O) ----------------------------------------

    def take(self, key: Key, input_tokens: int, max_tokens: int | None) -> str | None:
        """The call's id under a held lease when its worst case fits, else ``None``."""
        if max_tokens is None:
            return None
        with self._lock:
            lease = self._held.get(key)
            if lease is None:
                return None
            money, tokens = lease.worst(input_tokens, max_tokens)
            if (
                time.monotonic() >= lease.use_until
                or (lease.max_input is not None and input_tokens > lease.max_input)
                or not lease.fits(money, tokens)
            ):
                self._retire(lease)
                return None
            return self._debit(lease, money, tokens)

    def want(self, key: Key) -> bool:
        """Whether this reserve should ask for a lease (no other ask for ``key`` running);
        call :meth:`asked` after it."""
        with self._lock:
            if key in self._asking:
                return False
            self._asking.add(key)
            return True

    def asked(self, key: Key) -> None:
        with self._lock:
            self._asking.discard(key)

    def granted(self, key: Key, answer: dict[str, Any], input_tokens: int, max_tokens: int) -> str:
        """Hold the lease of a reserve's answer; the call that asked is its call 1.

        Raises:
            ValueError: the answer's lease is not the contract's.
        """
        lease = _parse(key, answer)
        money, tokens = lease.worst(input_tokens, max_tokens)
        with self._lock:
            old = self._held.get(key)
            if old is not None:
                self._retire(old)
            self._held[key] = lease
            self._by_id[lease.id] = lease
            lease.n = 0
            rid = self._debit(lease, money, tokens)
        timer = threading.Timer(max(0.0, lease.use_until - time.monotonic()), self.expire, [lease])
        timer.daemon = True
        timer.start()
        return rid

    def _debit(self, lease: Lease, money: Decimal, tokens: int) -> str:
        lease.n += 1
        if lease.money is not None:
            lease.money -= money
        if lease.tokens is not None:
            lease.tokens -= tokens
        lease.in_flight[lease.n] = (money, tokens)
        return f"{lease.id}.{lease.n}"

    # -- after a call ----------------------------------------------------------------------

    def owner(self, rid: str) -> Lease | None:
        head, _, n = rid.rpartition(".")
        return self._by_id.get(head) if head and n.isdigit() else None

    def finish(self, rid: str, usage: dict[str, int] | None, model: str | None) -> None:
        """The call ``rid`` ended with ``usage`` (``None``: failed without usage)."""
        head, _, n_text = rid.rpartition(".")
        with self._lock:
            lease = self._by_id.get(head)
            debited = lease.in_flight.pop(int(n_text), None) if lease is not None else None
            if lease is None or debited is None:
                return
            money, tokens = debited
            if usage is not None:
                spent_money, spent_tokens = lease.worst(usage["input"], usage["output"])
                money -= spent_money
                tokens -= spent_tokens
                lease.pending.append({"n": int(n_text), "usage": usage, "model": model})
            if lease.money is not None:
                lease.money += money
            if lease.tokens is not None:
                lease.tokens += tokens
            self._schedule(lease)

    def expire(self, lease: Lease) -> None:
        """The lease's use window ended (a timer)."""
        with self._lock:
            self._retire(lease)

    def retire_all(self) -> None:
        """At exit: stop using every lease; each is returned once its calls are reported."""
        with self._lock:
            for lease in list(self._by_id.values()):
                self._retire(lease)

    def _retire(self, lease: Lease) -> None:
        """(lock held)"""
        lease.retired = True
        if self._held.get(lease.key) is lease:
            del self._held[lease.key]
        self._schedule(lease)

    def _schedule(self, lease: Lease) -> None:
        """(lock held) Queue a report (and the return, when due) unless one is queued."""
        due = lease.pending or (lease.retired and not lease.in_flight and not lease.returned)
        if due and not lease.scheduled:
            lease.scheduled = True
            self._queue(lambda: self._flush(lease))

    def _flush(self, lease: Lease) -> None:
        """(the outbox thread) Report what is pending; return the lease when it is done."""
        while True:
            with self._lock:
                batch, lease.pending = lease.pending[:MAX_BATCH], lease.pending[MAX_BATCH:]
                if not batch:
                    done = lease.retired and not lease.in_flight and not lease.returned
                    if done:
                        lease.returned = True
                        self._by_id.pop(lease.id, None)
                    lease.scheduled = False
                    break
            answer = self._send(f"/v1/reservations/{lease.id}/calls", {"calls": batch})
            revoked = not answer or answer.get("revoked") is not False
            with self._lock:
                if not answer:
                    lease.broken = True
                if revoked:
                    self._retire(lease)
        if done and not lease.broken:
            self._send(f"/v1/reservations/{lease.id}", None)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._held, self._by_id, self._asking = {}, {}, set()


_ALL: weakref.WeakSet[Leases] = weakref.WeakSet()


def _forked() -> None:
    for leases in list(_ALL):
        leases._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def retire_all() -> None:
    """The exit hook (before the outbox's flush)."""
    for leases in list(_ALL):
        try:
            leases.retire_all()
        except Exception:
            logger.debug("meterline: returning leases failed", exc_info=True)


def _parse(key: Key, answer: dict[str, Any]) -> Lease:
    raw = answer["lease"]
    if not isinstance(raw, dict):
        raise ValueError(f"lease is {raw!r}")
    lid = raw.get("id")
    if not isinstance(lid, str) or not lid or "." in lid or "/" in lid:
        raise ValueError(f"lease id is {lid!r}")
    if answer.get("id") != f"{lid}.1":
        raise ValueError(f"the call's id {answer.get('id')!r} is not the lease's call 1")
    money = _amount(raw.get("money"))
    tokens = raw.get("tokens")
    if tokens is not None and (type(tokens) is not int or tokens < 0):
        raise ValueError(f"lease tokens is {tokens!r}")
    prices = raw.get("prices")
    if prices is None:
        if money is not None:
            raise ValueError("a lease in money needs prices")
        price_in = price_out = Decimal(0)
    elif isinstance(prices, dict):
        price_in, price_out = _amount(prices.get("input")), _amount(prices.get("output"))
        if price_in is None or price_out is None:
            raise ValueError(f"lease prices are {prices!r}")
    else:
        raise ValueError(f"lease prices are {prices!r}")
    max_input = raw.get("max_input_tokens")
    if max_input is not None and type(max_input) is not int:
        raise ValueError(f"lease max_input_tokens is {max_input!r}")
    use = raw.get("use_seconds")
    if type(use) not in (int, float) or not 0 < use <= 300:
        raise ValueError(f"lease use_seconds is {use!r}")
    return Lease(
        id=lid, key=key, money=money, tokens=tokens, price_in=price_in, price_out=price_out,
        max_input=max_input, use_until=time.monotonic() + float(use),
    )  # fmt: skip


def _amount(value: Any) -> Decimal | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"amount {value!r} is not a decimal string")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"amount {value!r} is not a decimal string") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"amount {value!r} must be >= 0")
    return amount
