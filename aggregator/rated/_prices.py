"""The pricing as parameters of the rating run: its version, the cells' prices, the plans.

Prices are looked up in Python (:class:`~meterline.aggregator.pricing.Rater`, the same
matching as every other reader) once per price cell; the engine multiplies. A price or a
markup with more decimals than the table holds is refused here, never truncated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any

from meterline.aggregator.pricing import MONEY_CONTEXT, Pricing, Rater, money_str
from meterline.config._pricing import decimals
from meterline.errors import MeterlineError
from meterline.store.rated_schema import MARKUP_FRACTION_SCALE, PRICE_SCALE

CellKey = tuple[str, str, str, int, int, int]
"""(provider, response model, request model, segment, time-of-day bucket, tier bucket)."""


class RatingError(MeterlineError):
    """Usage cannot be rated into the table exactly (a price with too many decimals)."""


TABLE_LAYOUT = "rated-v3"
"""The columns a rating writes (v2: ``MarkupFraction``, ``AtInputPrice``, migration 11;
v3: ``Fingerprint``, ``Keys`` and the markers' key sets, migration 15 — incremental runs
need every hour's key set): part of the version, so rows written in an older layout are
rated again."""


def config_version(pricing: Pricing) -> str:
    """A short digest of everything a rating depends on: currency, configured prices,
    plans and the catalogue in use. Another digest: every month is rated again."""
    catalogue = pricing.catalogue
    text = f"{TABLE_LAYOUT}|{pricing.config!r}|" + (
        catalogue.version if catalogue is not None else "-"
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shifted(value: Decimal, places: int) -> str:
    with localcontext(MONEY_CONTEXT):  # 60 digits: a shift never rounds
        return money_str(value.scaleb(places))


def _text(price: Decimal, where: str) -> str:
    if decimals(price) > PRICE_SCALE:
        raise RatingError(
            f"{where}: price {money_str(price)} per million tokens has more than "
            f"{PRICE_SCALE} decimals; rated_usage holds prices to {PRICE_SCALE} decimals"
        )
    return money_str(price)


def cell_params(rater: Rater, cells: Iterable[tuple[CellKey, datetime]]) -> dict[str, Any]:
    """Bound parameters with each cell's match and prices (per million as configured,
    and per token = per million / 10^6, exact)."""
    keys, matched, source, texts, per_token = [], [], [], [], []
    for key, first_at in cells:
        match, units = rater.cell(*key, first_at)
        keys.append(key)
        matched.append(int(match is not None))
        source.append("" if match is None else f"{match.source}:{match.matched}")
        where = f"{key[0]}/{key[1] or key[2]}"
        row_texts = ["" if u is None else _text(u, where) for u in units]
        texts.append(row_texts)
        per_token.append(
            ["" if u is None else _shifted(u, -6) for u in units]  # per token, exact
        )
    return {
        "cell_keys": keys,
        "cell_matched": matched,
        "cell_source": source,
        "cell_text": texts,
        "cell_per_token": per_token,
    }


def _fraction(percent: Decimal, where: str) -> str:
    if decimals(percent) > MARKUP_FRACTION_SCALE - 2:
        raise RatingError(
            f"{where}: markup_percent {money_str(percent)} has more than "
            f"{MARKUP_FRACTION_SCALE - 2} decimals; rated_usage holds markups to "
            f"{MARKUP_FRACTION_SCALE - 2} decimals"
        )
    return _shifted(percent, -2)


def plan_params(pricing: Pricing) -> dict[str, Any]:
    """Bound parameters with every plan's ``bill_failed_requests`` and markup fraction."""
    config = pricing.config
    plans = config.consumer_plans
    consumers = sorted(plans)
    return {
        "plan_consumers": consumers,
        "plan_bills_failed": [int(plans[c].bill_failed_requests) for c in consumers],
        "plan_markups": [
            _fraction(plans[c].markup_percent, f"plans.consumers.{c}") for c in consumers
        ],
        "default_bills_failed": int(config.default_plan.bill_failed_requests),
        "default_markup": _fraction(config.default_plan.markup_percent, "plans.default"),
        "currency": config.currency,
    }
