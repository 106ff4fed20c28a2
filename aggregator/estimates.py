"""Cost estimate preview of a call before it is sent (issue 11 §2; docs/estimate.md).

Three figures for one request (the JSON body the app would send):

- **input tokens**, counted offline by :func:`meterline.instrumentation.tokens.count_input_tokens`
  (exact for OpenAI models with ``bpe-openai``, else a calibrated estimate that errs high);
- **output tokens**: p50 and p95 of this consumer's own calls of the model over the last
  :data:`HISTORY_DAYS` days — of the same feature when it has at least
  :data:`MIN_HISTORY_CALLS` of them, else of every feature, else :data:`DEFAULT_OUTPUT`
  (capped by the worst case); the **worst case** is ``max_tokens`` or, when absent, the
  catalogue's context window minus the input (as the reservations do, docs/budgets.md);
- the **cost** of each with the price in force now: the cliff tier chosen from the
  estimated input, the consumer's plan markup added (the invoice's money), exact
  ``Decimal`` shown as strings. p50 / p95 put every input token at the input price (no
  cache discount) and output at the output price; the worst case is the reservations'
  (:func:`~meterline.aggregator.budgets.worst_case`: output at the reasoning price when
  that is higher). A model without a price has ``null`` costs (never 0).

Each budget that applies (:meth:`~meterline.aggregator.budgets.BudgetService.budgets_for`)
is listed with whether the worst case fits it now, and each rate limit that applies with
whether the worst case fits its window now (docs/rate-limits.md); ``allowed`` is true when
it fits every hard budget and every rate limit. Nothing is reserved: a call may still be
refused when its reservation is asked (other calls may have reserved in between).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from meterline.aggregator.budgets import BudgetService, BudgetState, worst_case
from meterline.aggregator.budgets._cost import unit_prices
from meterline.aggregator.budgets._model import shown
from meterline.aggregator.pricing import MONEY_CONTEXT, Pricing, exact_amount
from meterline.aggregator.queries import READ_SETTINGS
from meterline.aggregator.queries.output_history import output_history_sql
from meterline.aggregator.queries.usage import UsageFilter
from meterline.aggregator.tenancy import Scope
from meterline.errors import MeterlineError
from meterline.instrumentation.tokens import count_input_tokens
from meterline.store import Store

HISTORY_DAYS = 30
"""How far back the output history reaches."""
MIN_HISTORY_CALLS = 5
"""Fewest past calls whose output is taken as this consumer's history."""
DEFAULT_OUTPUT = (256, 1024)
"""p50 and p95 output tokens without history (each capped by the worst case)."""
BODY_KEYS = ("messages", "input", "prompt", "system", "instructions", "contents", "tools")
"""The request body fields the input is counted from."""


class EstimateError(MeterlineError, ValueError):
    """The request cannot be estimated (the API answers 422)."""


@dataclass(frozen=True)
class EstimateRequest:
    consumer: str
    provider: str
    model: str
    body: Mapping[str, Any]
    """The request body as the SDK sends it (``messages`` | ``input`` | ``prompt`` …)."""
    feature: str | None = None
    max_tokens: int | None = None
    api: str | None = None
    """``chat``, ``responses``, ``completions``, ``embeddings``, ``messages``, ``gemini``."""


@dataclass(frozen=True)
class OutputHistory:
    calls: int
    p50: int
    p95: int
    source: str
    """``feature`` (this feature's calls), ``consumer`` (all of the consumer's calls of the
    model) or ``default`` (:data:`DEFAULT_OUTPUT`)."""


@dataclass(frozen=True)
class Estimate:
    request: EstimateRequest
    input_tokens: int
    input_exact: bool
    output: OutputHistory
    max_tokens: int
    currency: str
    prices: dict[str, Decimal] | None
    costs: dict[str, Decimal | None]
    budgets: list[tuple[BudgetState, bool]] = field(default_factory=list)
    rate_limits: list[dict[str, Any]] = field(default_factory=list)
    """Each rate limit that applies: its state now and ``worst_case_fits``."""

    def to_dict(self) -> dict[str, Any]:
        r = self.request
        money = {k: None if v is None else shown(v, False) for k, v in self.costs.items()}
        return {
            "consumer": r.consumer,
            "feature": r.feature,
            "provider": r.provider,
            "model": r.model,
            "input_tokens": self.input_tokens,
            "input_exact": self.input_exact,
            "output_tokens": {
                "p50": self.output.p50,
                "p95": self.output.p95,
                "worst_case": self.max_tokens,
                "source": self.output.source,
                "history_calls": self.output.calls,
            },
            "currency": self.currency,
            "priced": self.prices is not None,
            "prices_per_million": None
            if self.prices is None
            else {k: shown(v, False) for k, v in self.prices.items()},
            "cost": money,
            "budgets": [s.to_dict() | {"worst_case_fits": fits} for s, fits in self.budgets],
            "rate_limits": self.rate_limits,
            "allowed": all(fits for _, fits in self.budgets)
            and all(r["worst_case_fits"] for r in self.rate_limits),
        }


def output_history(
    store: Store, *, consumer: str, feature: str | None, provider: str, model: str,
    now: datetime,
) -> OutputHistory:  # fmt: skip
    """p50 / p95 output tokens of the consumer's recent calls of ``model``."""
    start = now - timedelta(days=HISTORY_DAYS)
    tries = [("feature", feature)] if feature is not None else []
    tries.append(("consumer", None))
    for source, feat in tries:
        f = UsageFilter(start=start, end=now, consumer=consumer, feature=feat,
                        provider=provider, model=model, scope=Scope.only(consumer))  # fmt: skip
        sql, params = output_history_sql(f)
        _, rows = store.query(sql, params, settings=READ_SETTINGS)
        calls = int(rows[0][0]) if rows else 0
        if calls >= MIN_HISTORY_CALLS:
            p50, p95 = (int(q) for q in rows[0][1])
            return OutputHistory(calls, p50, p95, source)
    return OutputHistory(0, *DEFAULT_OUTPUT, "default")


def _output_limit(pricing: Pricing, req: EstimateRequest, input_tokens: int) -> int:
    catalogue = pricing.catalogue
    found = catalogue.find(req.provider, req.model) if catalogue is not None else None
    window = getattr(getattr(found, "info", None), "context_window", None)
    if isinstance(window, int) and window > input_tokens:
        return window - input_tokens
    raise EstimateError(
        f"max_tokens is required for {req.provider}/{req.model}: no output limit is known for it"
    )


def _expected(
    pricing: Pricing, consumer: str, prices: dict[str, Decimal], inp: int, out: int
) -> Decimal | None:
    if "input" not in prices or "output" not in prices:
        return None
    with localcontext(MONEY_CONTEXT):
        base = exact_amount(inp, prices["input"]) + exact_amount(out, prices["output"])
        percent = pricing.config.plan_for(consumer).markup_percent
        return base + base * percent / 100


def estimate(
    store: Store,
    pricing: Pricing,
    budgets: BudgetService | None,
    req: EstimateRequest,
    *,
    now: datetime | None = None,
) -> Estimate:
    """Estimate ``req`` (see the module docstring).

    Raises:
        EstimateError: no ``max_tokens`` and no output limit known for the model.
    """
    now = now or datetime.now(UTC)
    body = {"model": req.model, **{k: req.body[k] for k in BODY_KEYS if k in req.body}}
    input_tokens, exact = count_input_tokens(req.provider, req.model, body, api=req.api)
    max_tokens = req.max_tokens
    if max_tokens is None:
        max_tokens = _output_limit(pricing, req, input_tokens)
    hist = output_history(store, consumer=req.consumer, feature=req.feature,
                          provider=req.provider, model=req.model, now=now)  # fmt: skip
    hist = OutputHistory(hist.calls, min(hist.p50, max_tokens), min(hist.p95, max_tokens),
                         hist.source)  # fmt: skip
    prices = unit_prices(pricing, req.provider, req.model, input_tokens, now)
    worst = worst_case(pricing, consumer=req.consumer, provider=req.provider, model=req.model,
                       input_tokens=input_tokens, max_tokens=max_tokens, at=now)  # fmt: skip
    costs: dict[str, Decimal | None] = {"p50": None, "p95": None, "worst_case": worst.money}
    if prices is not None:
        costs["p50"] = _expected(pricing, req.consumer, prices, input_tokens, hist.p50)
        costs["p95"] = _expected(pricing, req.consumer, prices, input_tokens, hist.p95)
    checked: list[tuple[BudgetState, bool]] = []
    if budgets is not None:
        for state in budgets.budgets_for(pricing, req.consumer, req.feature):
            amount = worst.amount(state.budget.in_tokens)
            # unpriced: never passes a hard money budget
            fits = state.budget.mode == "soft" if amount is None else state.fits(amount)
            checked.append((state, fits))
    rates: list[dict[str, Any]] = []
    if budgets is not None:
        applicable = budgets.registry.applicable_rates(req.consumer, req.provider, req.model)
        for rate, state in zip(applicable, budgets.rate_states(applicable), strict=True):
            amount = rate.amount(worst.tokens, worst.money)
            unpriced = rate.in_money and worst.money is None
            fits = not unpriced and Decimal(state["remaining"]) >= amount
            rates.append(state | {"worst_case_fits": fits})
    return Estimate(req, input_tokens, exact, hist, max_tokens, pricing.config.currency,
                    prices, costs, checked, rates)  # fmt: skip
