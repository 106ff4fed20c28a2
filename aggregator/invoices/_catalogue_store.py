"""Price catalogue snapshots in the store, and ``prices update``.

``prices update`` fetches genai-prices' published data from the configuration's
``catalogue.url`` (never from a URL a request names: the server would fetch whatever an
API caller asked for), compares it with the catalogue in use, and stores it (table
``price_catalogue``) so every later rating uses it. Nothing is fetched at start-up:
without a stored snapshot the bundled data is used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meterline.aggregator.pricing import (
    DEFAULT_CATALOGUE_URL,
    Catalogue,
    Pricing,
    load_pricing_config,
)
from meterline.aggregator.pricing._catalogue import PriceScaleError
from meterline.aggregator.queries import invoices as sql
from meterline.errors import MeterlineError
from meterline.store import Store

logger = logging.getLogger(__name__)

DEFAULT_PRICES_URL = DEFAULT_CATALOGUE_URL
"""Where genai-prices publishes its data (its own auto-update URL)."""


class PriceUpdateError(MeterlineError):
    """The published prices could not be fetched or read; nothing was changed."""


def stored_catalogue(store: Store) -> Catalogue | None:
    """The newest catalogue stored by ``prices update``, or ``None``."""
    _, rows = store.query(sql.LATEST_CATALOGUE_SQL)
    if not rows:
        return None
    fetched_at, source, data = rows[0]
    return Catalogue.from_raw(
        json.loads(data),
        source=f"{source} (fetched {fetched_at:%Y-%m-%d})",
        version=f"{source}@{fetched_at.isoformat()}",
    )


def load_store_pricing(store: Store, config_path: str | Path | None) -> Pricing:
    """Pricing from the configuration file over the stored (else bundled) catalogue.

    Raises:
        PricingConfigError: the configuration file is unreadable or invalid.
    """
    config = load_pricing_config(config_path)
    return Pricing.build(config, stored_catalogue(store) or Catalogue.bundled())


@dataclass(frozen=True)
class PriceChange:
    """A catalogue model whose prices differ between two catalogues."""

    provider: str
    model: str
    before: dict[str, Any] | None
    """Its dated prices before (``None``: new model)."""
    after: dict[str, Any] | None
    """Its dated prices after (``None``: removed)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "before": self.before,
            "after": self.after,
        }


def _dated_prices(catalogue: Catalogue) -> dict[tuple[str, str], dict[str, Any]]:
    from meterline.aggregator.pricing._catalogue import CatalogueModel

    found: dict[tuple[str, str], dict[str, Any]] = {}
    for provider in catalogue.providers:
        for info in provider.models:
            model = CatalogueModel(provider.id, info.id, info)
            starts = [datetime(1970, 1, 1, tzinfo=UTC), *model.change_points]
            found[(provider.id, info.id)] = {
                ("always" if i == 0 else f"{at:%Y-%m-%d}"): model.prices_at(at).to_dict()
                for i, at in enumerate(starts)
            }
    return found


def diff_catalogues(before: Catalogue, after: Catalogue) -> list[PriceChange]:
    """Models whose token prices changed, appeared or disappeared."""
    old, new = _dated_prices(before), _dated_prices(after)
    return [
        PriceChange(provider, model, old.get((provider, model)), new.get((provider, model)))
        for provider, model in sorted(set(old) | set(new))
        if old.get((provider, model)) != new.get((provider, model))
    ]


@dataclass(frozen=True)
class PriceUpdate:
    """The result of ``prices update``."""

    source: str
    fetched_at: datetime
    changes: tuple[PriceChange, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "fetched_at": self.fetched_at.isoformat().replace("+00:00", "Z"),
            "changes": [c.to_dict() for c in self.changes],
        }


def update_catalogue(
    store: Store, current: Catalogue | None, *, url: str = DEFAULT_PRICES_URL, timeout: float = 10
) -> PriceUpdate:
    """Fetch the published prices, store them, and report what changed.

    Raises:
        PriceUpdateError: the host is unreachable or the data is not genai-prices data;
            the prices in use are unchanged.
    """
    import httpx2

    try:
        response = httpx2.get(url, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
        raw = json.loads(response.content)
        fetched = Catalogue.from_raw(raw, source=url)
    except httpx2.HTTPError as exc:
        in_use = current.source if current is not None else "the bundled data"
        raise PriceUpdateError(
            f"cannot fetch prices from {url}: {type(exc).__name__}: {exc or 'no detail'}; "
            f"prices unchanged ({in_use})"
        ) from None
    except PriceScaleError as exc:
        raise PriceUpdateError(f"{exc}; prices unchanged") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise PriceUpdateError(
            f"{url} did not return genai-prices data ({exc}); prices unchanged"
        ) from None
    changes = diff_catalogues(current or Catalogue.bundled(), fetched)
    now = datetime.now(UTC)
    store.insert_columns(
        "price_catalogue",
        [[now], [url], [json.dumps(raw, separators=(",", ":"))]],
        sql.CATALOGUE_COLUMNS,
    )
    logger.info("stored prices from %s: %d models changed", url, len(changes))
    return PriceUpdate(url, now, tuple(changes))
