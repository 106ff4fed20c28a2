"""The price table shown by ``GET /v1/prices`` and ``meterline prices show``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from meterline.aggregator.pricing._catalogue import CatalogueModel, canonical_provider

if TYPE_CHECKING:
    from meterline.aggregator.pricing import Pricing


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def price_table(
    pricing: Pricing,
    *,
    at: datetime,
    provider: str | None = None,
    model: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Prices in use at ``at``: configuration entries (all dates), then catalogue models.

    With ``model``, only the price a call of that model (and ``provider``) would get.
    """
    head: dict[str, Any] = {
        "currency": pricing.config.currency,
        "catalogue": pricing.catalogue.source if pricing.catalogue is not None else None,
        "at": _iso(at),
    }
    if model is not None:
        match = pricing.book.match(provider or "", model, model, at)
        head["prices"] = (
            []
            if match is None
            else [
                {
                    "provider": provider or "",
                    "model": model,
                    "source": match.source,
                    "matched": match.matched,
                    "effective_from": _iso(match.effective_from),
                    **match.prices.to_dict(),
                }
            ]
        )
        return head
    wanted = canonical_provider(provider) if provider else None
    rows: list[dict[str, Any]] = []
    if source in (None, "config"):
        for entry in pricing.config.entries:
            if wanted is not None and canonical_provider(entry.provider) != wanted:
                continue
            rows.append(
                {
                    "provider": entry.provider,
                    "model": entry.label,
                    "source": "config",
                    "matched": entry.label,
                    "effective_from": _iso(entry.effective_from),
                    **entry.prices.to_dict(),
                }
            )
    if source in (None, "catalogue") and pricing.catalogue is not None:
        for prov in pricing.catalogue.providers:
            if wanted is not None and prov.id != wanted:
                continue
            for info in prov.models:
                cm = CatalogueModel(prov.id, info.id, info)
                prices = cm.prices_at(at)
                if not prices.per_million_tokens:
                    continue
                rows.append(
                    {
                        "provider": prov.id,
                        "model": info.id,
                        "source": "catalogue",
                        "matched": cm.label,
                        "effective_from": None,
                        **prices.to_dict(),
                    }
                )
    head["prices"] = rows
    return head
