"""Money as Stripe's integer amounts: minor units by Stripe's currency table, sums kept.

Contract:
- :func:`stripe_exponent` is the number of decimals Stripe's API amounts carry for a
  currency (its zero-decimal and three-decimal lists; every other currency 2). It can
  differ from meterline's own minor unit (``MINOR_UNITS``: ISK has 0 decimals there, 2
  in Stripe's API), so amounts are converted, never reinterpreted.
- :func:`split_exact` turns amounts that belong together (an invoice's lines and its
  markup) into integers that add up to their exact sum rounded half-up: each amount is
  floored, and the units still missing go one each to the largest remainders (ties: the
  earlier amount). An amount already whole in Stripe's unit — every amount of an
  invoice in a currency whose minor unit is Stripe's — is sent unchanged.

Known limit: Stripe asks three-decimal currencies (BHD, JOD, KWD, OMR, TND) for charges
in multiples of 10; the amounts are sent as rated, to the thousandth.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, localcontext

from meterline.aggregator.pricing import MONEY_CONTEXT

__all__ = ["STRIPE_THREE_DECIMAL", "STRIPE_ZERO_DECIMAL", "split_exact", "stripe_exponent"]

STRIPE_ZERO_DECIMAL = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV",
     "XAF", "XOF", "XPF"}
)  # fmt: skip
"""Stripe's zero-decimal currencies (docs.stripe.com/currencies#zero-decimal)."""
STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
"""Stripe's three-decimal currencies (docs.stripe.com/currencies#three-decimal)."""


def stripe_exponent(currency: str) -> int:
    """Decimals of Stripe's integer amounts in ``currency`` (ISO code, any case)."""
    code = currency.upper()
    if code in STRIPE_ZERO_DECIMAL:
        return 0
    return 3 if code in STRIPE_THREE_DECIMAL else 2


def split_exact(amounts: Sequence[Decimal], currency: str) -> list[int]:
    """Stripe amounts for ``amounts`` whose sum is ``sum(amounts)`` rounded half-up
    (largest remainder; see the module docstring)."""
    with localcontext(MONEY_CONTEXT):
        scaled = [Decimal(a).scaleb(stripe_exponent(currency)) for a in amounts]
        floors = [int(x.to_integral_value(rounding=ROUND_FLOOR)) for x in scaled]
        target = int(sum(scaled, Decimal(0)).to_integral_value(rounding=ROUND_HALF_UP))
        missing = target - sum(floors)
        order = sorted(
            (i for i, x in enumerate(scaled) if x != floors[i]),
            key=lambda i: (-(scaled[i] - floors[i]), i),
        )
    if not 0 <= missing <= len(order):  # cannot happen: sum of remainders bounds it
        raise AssertionError(f"largest remainder out of range: {missing} of {len(order)}")
    out = list(floors)
    for i in order[:missing]:
        out[i] += 1
    return out
