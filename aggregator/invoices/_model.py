"""Invoice records and their JSON form (money as decimal strings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from meterline.aggregator.pricing import money_str


@dataclass(frozen=True)
class InvoiceLine:
    """Tokens of one type of one model at one unit price."""

    provider: str
    model: str
    """The model the provider reported (response model)."""
    token_type: str
    """``input``, ``cache_read``, ``cache_write``, ``cache_write_1h``, ``output``, ``reasoning``."""
    quantity: int
    """Tokens."""
    unit_price_per_million: Decimal
    amount: Decimal
    """``quantity × unit price / 1e6`` rounded half-up to the currency's minor unit."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "token_type": self.token_type,
            "quantity": self.quantity,
            "unit_price_per_million": money_str(self.unit_price_per_million),
            "amount": money_str(self.amount),
        }


@dataclass(frozen=True)
class UnbilledUsage:
    """Usage an invoice lists without billing it — of a model without a price
    (``unpriced``), or failed calls the plan does not bill (``failed``): counted and
    shown, never billed as zero."""

    provider: str
    model: str
    requests: int
    input_tokens: int
    """Gross input tokens (cache reads and writes included)."""
    output_tokens: int
    """Gross output tokens (reasoning included)."""
    quantities: tuple[tuple[str, int], ...] | None = None
    """``(token type, tokens)`` for every token type, disjoint as in invoice lines
    (``None``: an invoice stored before they were kept)."""

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "provider": self.provider,
            "model": self.model,
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.quantities is not None:
            doc["quantities"] = dict(self.quantities)
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnbilledUsage:
        quantities = data.get("quantities")
        return cls(
            provider=data["provider"],
            model=data["model"],
            requests=int(data["requests"]),
            input_tokens=int(data["input_tokens"]),
            output_tokens=int(data["output_tokens"]),
            quantities=None
            if quantities is None
            else tuple((str(k), int(v)) for k, v in quantities.items()),
        )


UnpricedUsage = UnbilledUsage
"""The earlier name of :class:`UnbilledUsage`."""


@dataclass(frozen=True)
class InvalidUsage:
    """Calls whose reported usage the store found invalid: listed, never billed."""

    provider: str
    model: str
    reason: str
    """The store's ``UsageError``: the attribute and the kind of problem."""
    requests: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "reason": self.reason,
            "requests": self.requests,
        }


@dataclass(frozen=True)
class Invoice:
    """One consumer's invoice for a period."""

    consumer: str
    period: str
    currency: str
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal
    """Sum of the (rounded) line amounts."""
    markup: Decimal
    """``subtotal × markup_percent / 100`` rounded half-up."""
    total: Decimal
    """``subtotal + markup``."""
    unpriced: tuple[UnbilledUsage, ...] = field(default=())
    failed_requests: int = 0
    """Failed calls in the period (billed only when the plan says so)."""
    failed: tuple[UnbilledUsage, ...] = field(default=())
    """The failed calls the plan does not bill, per model (billed ones are in ``lines``)."""
    invalid: tuple[InvalidUsage, ...] = field(default=())
    """Calls with invalid usage (not billed, not in ``failed_requests``)."""

    @property
    def invalid_requests(self) -> int:
        return sum(u.requests for u in self.invalid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "period": self.period,
            "currency": self.currency,
            "lines": [line.to_dict() for line in self.lines],
            "subtotal": money_str(self.subtotal),
            "markup": money_str(self.markup),
            "total": money_str(self.total),
            "unpriced": [u.to_dict() for u in self.unpriced],
            "failed_requests": self.failed_requests,
            "failed": [u.to_dict() for u in self.failed],
            "invalid_requests": self.invalid_requests,
            "invalid": [u.to_dict() for u in self.invalid],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Invoice:
        return cls(
            consumer=data["consumer"],
            period=data["period"],
            currency=data["currency"],
            lines=tuple(
                InvoiceLine(
                    provider=line["provider"],
                    model=line["model"],
                    token_type=line["token_type"],
                    quantity=int(line["quantity"]),
                    unit_price_per_million=Decimal(line["unit_price_per_million"]),
                    amount=Decimal(line["amount"]),
                )
                for line in data["lines"]
            ),
            subtotal=Decimal(data["subtotal"]),
            markup=Decimal(data["markup"]),
            total=Decimal(data["total"]),
            unpriced=tuple(UnbilledUsage.from_dict(u) for u in data.get("unpriced", ())),
            failed_requests=int(data.get("failed_requests", 0)),
            failed=tuple(UnbilledUsage.from_dict(u) for u in data.get("failed", ())),
            invalid=tuple(InvalidUsage(**u) for u in data.get("invalid", ())),
        )
