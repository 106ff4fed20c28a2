"""``meterline.estimate(...)``: the cost estimate preview as a Python function.

The same answer as ``POST /v1/estimate`` (docs/estimate.md), from a running server when
``api_url`` (or ``METERLINE_API_URL``) is set — key ``api_key`` or ``METERLINE_API_KEY``;
standard library only — otherwise from a store opened in this process (``data_dir`` /
``clickhouse_url`` / ``config``, or the same ``METERLINE_*`` variables as ``serve``; needs
``meterline[server]``; an embedded store is opened by one process only, so while
``meterline serve`` runs on it, use its API).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from meterline.errors import MeterlineError


class EstimateFailed(MeterlineError):
    """The estimate could not be made (the message says why and what to do)."""


def estimate(
    *,
    consumer: str,
    provider: str,
    model: str,
    messages: list[Any] | None = None,
    input: Any = None,  # the API's own field name
    prompt: Any = None,
    system: Any = None,
    instructions: str | None = None,
    contents: Any = None,
    tools: list[Any] | None = None,
    max_tokens: int | None = None,
    feature: str | None = None,
    api: str | None = None,
    api_url: str | None = None,
    api_key: str | None = None,
    data_dir: str | Path | None = None,
    clickhouse_url: str | None = None,
    config: str | Path | None = None,
) -> dict[str, Any]:
    """What a call would cost before it is sent: input tokens, expected (p50 / p95) and
    worst-case output, their cost at today's prices, and each budget's fit.

    Returns:
        The JSON object of ``POST /v1/estimate`` (money as decimal strings).

    Raises:
        EstimateFailed: the server refused or is unreachable, the request is invalid, or
            no store could be opened.
    """
    body = {
        k: v
        for k, v in {
            "consumer": consumer, "feature": feature, "provider": provider, "model": model,
            "messages": messages, "input": input, "prompt": prompt, "system": system,
            "instructions": instructions, "contents": contents, "tools": tools,
            "max_tokens": max_tokens, "api": api,
        }.items()
        if v is not None
    }  # fmt: skip
    url = api_url or os.environ.get("METERLINE_API_URL")
    if url:
        return _remote(url, api_key or os.environ.get("METERLINE_API_KEY"), body)
    return _local(body, data_dir=data_dir, clickhouse_url=clickhouse_url, config=config)


def _remote(url: str, key: str | None, body: dict[str, Any]) -> dict[str, Any]:
    from meterline.aggregator.cli import CommandError, _Remote

    try:
        return _Remote(url, key).call("POST", "/v1/estimate", body=body)  # type: ignore[no-any-return]
    except CommandError as exc:
        raise EstimateFailed(str(exc)) from None


def _local(
    body: dict[str, Any], *, data_dir: Any, clickhouse_url: str | None, config: Any
) -> dict[str, Any]:
    from pydantic import ValidationError

    from meterline.aggregator.budgets import BudgetService, load_budgets_config
    from meterline.aggregator.estimates import EstimateError, EstimateRequest
    from meterline.aggregator.estimates import estimate as compute
    from meterline.aggregator.invoices import load_store_pricing
    from meterline.aggregator.routes.estimate import EstimateCreate
    from meterline.server import open_configured_store
    from meterline.settings import settings_from_flags

    try:
        checked = EstimateCreate(**body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"])
        raise EstimateFailed(f"{where + ': ' if where else ''}{error['msg']}") from None
    settings = settings_from_flags(data_dir=data_dir, clickhouse_url=clickhouse_url,
                                   config=config)  # fmt: skip
    if not settings.clickhouse_url and not (Path(settings.data_dir) / "metadata").is_dir():
        raise EstimateFailed(
            f"{Path(settings.data_dir).resolve()} is not a meterline store: name one with "
            "data_dir= (or METERLINE_DATA_DIR), clickhouse_url=, or api_url= for a running server"
        )
    store = open_configured_store(settings)
    try:
        store.migrate()
        pricing = load_store_pricing(store, settings.config)
        currency = pricing.config.currency
        limits = load_budgets_config(settings.config, currency=currency)
        service = BudgetService(
            store, limits, currency=currency, redis_url=settings.budgets_redis_url
        )
        req = EstimateRequest(
            consumer=checked.consumer, provider=checked.provider, model=checked.model,
            body=checked.model_dump(exclude_none=True), feature=checked.feature,
            max_tokens=checked.max_tokens, api=checked.api,
        )  # fmt: skip
        try:
            return compute(store, pricing, service, req, now=service.now()).to_dict()
        except EstimateError as exc:
            raise EstimateFailed(str(exc)) from None
    finally:
        store.close()
