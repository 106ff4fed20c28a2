"""Pricing without the store: configuration, matching, tiers, the catalogue."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from meterline.aggregator import pricing
from meterline.aggregator.pricing import (
    Catalogue,
    PriceBook,
    PricingConfigError,
    load_pricing,
    parse_pricing_config,
    round_money,
)
from tests.aggregator.pricing_config import write_config


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.bundled()


def test_public_api_is_pinned() -> None:
    assert set(pricing.__all__) == {
        "DEFAULT_CATALOGUE_URL", "DEFAULT_GRACE", "parse_duration",
        "MINOR_UNITS", "MONEY_CONTEXT", "PROVIDER_ALIASES", "TOKEN_TYPES", "Catalogue",
        "CatalogueModel", "Charge", "Plan", "PriceBook", "PriceEntry", "PriceMatch", "PriceSet",
        "Pricing", "PricingConfig", "PricingConfigError", "RatedGroup", "Rater", "RatingGrid",
        "Tier", "UsageGroup", "canonical_provider", "exact_amount", "load_pricing",
        "load_pricing_config", "money_str", "parse_pricing_config", "price_table", "pricing_config",
        "round_money",
    }  # fmt: skip


def test_config_file_in_the_issue_shape(tmp_path) -> None:
    p = load_pricing(write_config(tmp_path))
    assert p.config.currency == "USD"
    assert p.config.plan_for("acme").markup_percent == Decimal("20")
    assert p.config.plan_for("beta").bill_failed_requests is True
    assert p.config.plan_for("nobody").markup_percent == Decimal("0")
    sonnet = p.config.entries[3]
    assert sonnet.match is not None and sonnet.prices.thresholds == (200000,)
    # the tier replaces input and output; other types keep the base price
    assert sonnet.prices.unit_prices(200001) == {
        "input": Decimal("6.00"), "cache_read": Decimal("0.30"), "cache_write": Decimal("3.75"),
        "cache_write_1h": Decimal("6.00"), "output": Decimal("22.50"), "reasoning": Decimal("22.50"),
    }  # fmt: skip
    assert sonnet.prices.unit_prices(200000)["input"] == Decimal("3.00")  # cliff: strictly above


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"currency": "usd"}, "currency: 'usd' is not an ISO 4217 code"),
        ({"models": [{"provider": "openai", "per_million_tokens": {"input": "1"}}]},
         r"models\[0\]: give exactly one of `model` \(an exact id\) or `match`"),
        ({"models": [{"provider": "openai", "model": "m", "per_million_tokens": {"input": 2.5}}]},
         r"models\[0\].per_million_tokens.input: 2.5 is a YAML float, and binary floats are not exact money"),
        ({"models": [{"provider": "openai", "model": "m", "per_million_tokens": {"inptu": "1"}}]},
         r"models\[0\].per_million_tokens.inptu: unknown key `inptu`: did you mean `input`\?"),
        ({"models": [{"provider": "openai", "match": "(", "per_million_tokens": {"input": "1"}}]},
         r"models\[0\].match: invalid regular expression '\('"),
        ({"models": [{"provider": "o", "model": "m", "effective_from": "soon",
                      "per_million_tokens": {"input": "1"}}]},
         "effective_from: 'soon' is not a date"),
        ({"plans": {"consumers": {"acme": {"markup_percent": "-1"}}}},
         "plans.consumers.acme.markup_percent: '-1' must be a finite, non-negative amount"),
    ],
)  # fmt: skip
def test_bad_config_is_a_precise_error(data: dict, message: str) -> None:
    with pytest.raises(PricingConfigError, match=message):
        parse_pricing_config(data)


def test_unreadable_config_names_the_file(tmp_path) -> None:
    with pytest.raises(PricingConfigError, match=r"missing\.yaml: no such file"):
        load_pricing(tmp_path / "missing.yaml")


def test_matching_order_and_effective_dates(tmp_path, catalogue: Catalogue) -> None:
    book = load_pricing(write_config(tmp_path), catalogue=catalogue).book
    # the response model (dated) is not configured: the request model's exact entry wins
    m = book.match("openai", "gpt-4o-2024-08-06", "gpt-4o", at(2026, 3, 15, 23, 59, 59))
    assert (m.source, m.matched, m.prices.per_million_tokens["input"]) == (
        "config", "gpt-4o", Decimal("2.50"))  # fmt: skip
    m = book.match("openai", "gpt-4o-2024-08-06", "gpt-4o", at(2026, 3, 16))
    assert m.prices.per_million_tokens["input"] == Decimal("2.00")  # from its date on
    # a dated id only the catalogue knows still gets the configured override of its
    # canonical id
    m = book.match("openai", "gpt-4o-2024-11-20", "gpt-4o-2024-11-20", at(2026, 3, 1))
    assert (m.source, m.matched) == ("config", "gpt-4o")
    # patterns: the dated Anthropic id matches the configured regex
    m = book.match("anthropic", "claude-sonnet-4-20250514", "", at(2026, 3, 1))
    assert m.matched == "match:^claude-sonnet-4(-[0-9]{8})?$"
    # the catalogue: dated ids, semconv provider names, provider prefixes
    m = book.match("anthropic", "claude-opus-4-20250514", "", at(2026, 3, 1))
    assert (m.source, m.matched) == ("catalogue", "anthropic/claude-opus-4-0")
    assert m.prices.unit_prices(0)["cache_write_1h"] == Decimal("30")
    m = book.match("gcp.gemini", "gemini-2.5-pro", "", at(2026, 3, 1))
    assert m.matched == "google/gemini-2.5-pro"
    m = book.match("", "openai/gpt-4o-mini", "", at(2026, 3, 1))
    assert m.matched == "openai/gpt-4o-mini"
    assert book.match("openai", "mystery-1", "mystery-1", at(2026, 3, 1)) is None


def test_catalogue_dates_and_tiers(catalogue: Catalogue) -> None:
    model = catalogue.find("anthropic", "claude-sonnet-4-6")
    assert model is not None
    assert model.change_points == (at(2026, 3, 13),)
    before = model.prices_at(at(2026, 3, 12, 23))
    after = model.prices_at(at(2026, 3, 13))
    assert before.unit_prices(200001)["input"] == Decimal("6")
    assert after.unit_prices(200001)["input"] == Decimal("3")
    grid = PriceBook(parse_pricing_config({}), catalogue).grid(
        [("anthropic", "claude-sonnet-4-6", "claude-sonnet-4-6"),
         ("deepseek", "deepseek-chat", "deepseek-chat")]
    )  # fmt: skip
    assert grid.thresholds == (200000,)
    assert at(2026, 3, 13) in grid.change_points
    assert grid.time_of_day[0] == (("deepseek", "deepseek-chat", "deepseek-chat"),)


def test_non_usd_currency_uses_configured_prices_only(catalogue: Catalogue) -> None:
    book = PriceBook(parse_pricing_config({"currency": "EUR"}), catalogue)
    assert book.match("openai", "gpt-4o", "gpt-4o", at(2026, 3, 1)) is None


def test_rounding_is_half_up_to_the_minor_unit() -> None:
    assert round_money(Decimal("0.015"), 2) == Decimal("0.02")
    assert round_money(Decimal("0.0149999"), 2) == Decimal("0.01")
    assert round_money(Decimal("2.5"), 0) == Decimal("3")
    assert round_money(Decimal("0.0005"), 3) == Decimal("0.001")
