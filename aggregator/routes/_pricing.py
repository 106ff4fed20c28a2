"""The ``Pricing`` dependency: configuration file + catalogue, loaded once per app.

The catalogue is the newest snapshot stored by ``prices update``, else the data bundled
with genai-prices. :func:`reset_pricing` drops the cached one after an update.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from meterline.aggregator.deps import SettingsDep, StoreDep
from meterline.aggregator.invoices import load_store_pricing
from meterline.aggregator.pricing import Pricing, PricingConfigError

_lock = threading.Lock()


def get_pricing(request: Request, settings: SettingsDep, store: StoreDep) -> Pricing:
    pricing = getattr(request.app.state, "pricing", None)
    if pricing is None:
        with _lock:
            pricing = getattr(request.app.state, "pricing", None)
            if pricing is None:
                try:
                    pricing = load_store_pricing(store, settings.config)
                except PricingConfigError as exc:
                    raise HTTPException(status_code=500, detail=str(exc)) from None
                request.app.state.pricing = pricing
    return pricing


def reset_pricing(request: Request) -> None:
    request.app.state.pricing = None


PricingDep = Annotated[Pricing, Depends(get_pricing)]
