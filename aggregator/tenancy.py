"""Tenancy: which consumers' data a read may touch.

Contract: every query function that reads usage or invoices takes a :class:`Scope` (no
default), and the query layer ANDs it into the SQL as a bound parameter, whatever other
filter the caller asked for. A consumer-scoped key's scope therefore narrows the query
itself (``ConsumerId = {scope_consumer}``): a ``consumer`` filter naming someone else,
``group_by=consumer`` or a future route all read only that consumer's rows. The API
gets its scope from the caller's key (:mod:`meterline.aggregator.auth`); the CLI on a
local store, finalisation and re-pricing use :data:`Scope.ALL` explicitly.

Consumer ids compare exactly (bytes, case-sensitive), as ClickHouse compares strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


class NotVisible(LookupError):
    """The consumer asked for is outside the caller's scope (the API answers 404)."""


@dataclass(frozen=True)
class Scope:
    """The consumers a read may see: every one (``consumer is None``) or exactly one."""

    consumer: str | None
    """The one consumer visible, or ``None`` for all of them (admin)."""

    ALL: ClassVar[Scope]

    @classmethod
    def only(cls, consumer: str) -> Scope:
        """The scope of one consumer's key (``consumer`` must not be empty)."""
        if not consumer:
            raise ValueError("a consumer scope needs a consumer id")
        return cls(consumer)

    def admits(self, consumer: str) -> bool:
        return self.consumer is None or consumer == self.consumer

    def check(self, consumer: str) -> str:
        """``consumer`` when visible, else :class:`NotVisible`."""
        if not self.admits(consumer):
            raise NotVisible("not found")
        return consumer

    def condition(self, params: dict[str, Any], column: str = "ConsumerId") -> str:
        """The scope as a SQL condition on ``column`` (``1`` for every consumer), its
        value added to ``params`` as the bound parameter ``scope_consumer``."""
        if self.consumer is None:
            return "1"
        params["scope_consumer"] = self.consumer
        return f"{column} = {{scope_consumer:String}}"


Scope.ALL = Scope(None)
