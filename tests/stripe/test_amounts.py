"""Stripe's integer amounts: minor units by Stripe's currency table, sums kept exactly."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from hypothesis import given
from hypothesis import strategies as st

from meterline.aggregator.stripe._amounts import split_exact, stripe_exponent


def test_stripe_exponents_follow_stripe_not_iso() -> None:
    assert [stripe_exponent(c) for c in ("usd", "EUR", "jpy", "KRW", "ugx", "kwd", "isk")] == [
        2, 2, 0, 0, 0, 3, 2]  # fmt: skip


def test_whole_minor_units_are_sent_unchanged() -> None:
    assert split_exact([Decimal("0.66"), Decimal("1.50"), Decimal("0.00"), Decimal("1.54")],
                       "usd") == [66, 150, 0, 154]  # fmt: skip
    assert split_exact([Decimal("12")], "isk") == [1200]  # ISK: 0 decimals here, 2 in Stripe
    assert split_exact([Decimal("-2.35")], "usd") == [-235]


def test_largest_remainder_gives_the_missing_units_to_the_largest_fractions() -> None:
    # 0.4 + 0.4 + 0.4 = 1.2 → 1: one unit, to the first of the equal remainders
    assert split_exact([Decimal("0.4")] * 3, "jpy") == [1, 0, 0]
    # 0.6 + 0.7 + 0.7 = 2.0 → 2: the two largest remainders
    assert split_exact([Decimal("0.6"), Decimal("0.7"), Decimal("0.7")], "jpy") == [0, 1, 1]
    # half-up on the total: 0.25 + 0.25 = 0.5 → 1
    assert split_exact([Decimal("0.25"), Decimal("0.25")], "ugx") == [1, 0]


amounts = st.lists(
    st.decimals(min_value=-50, max_value=5000, places=4, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=30,
)


@given(amounts, st.sampled_from(["usd", "jpy", "ugx", "kwd", "isk"]))
def test_items_sum_to_the_total_and_each_is_within_one_unit(
    values: list[Decimal], currency: str
) -> None:
    out = split_exact(values, currency)
    scale = Decimal(10) ** stripe_exponent(currency)
    exact = [v * scale for v in values]
    assert sum(out) == int(sum(exact).to_integral_value(rounding=ROUND_HALF_UP))
    assert all(abs(o - e) < 1 for o, e in zip(out, exact, strict=True))
    assert all(o == e for o, e in zip(out, exact, strict=True) if e == e.to_integral_value())
