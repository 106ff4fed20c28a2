"""The ``Pricing`` dependency: the configuration file's prices over the catalogue.

The configuration is validated before the app serves (``app.state.config``); the
catalogue is the newest snapshot stored by ``prices update``, else the data bundled
with genai-prices. The two are combined once and kept until :func:`reset_pricing` (after
an update) or :func:`use_config` (after a reload) drops them.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from meterline.aggregator.deps import StoreDep
from meterline.aggregator.pricing import Catalogue, Pricing, pricing_config
from meterline.config import ConfigFile

_lock = threading.Lock()


def app_pricing(app: FastAPI) -> Pricing:
    """The app's pricing, built on first use (also for the rating loop)."""
    from meterline.aggregator.invoices._catalogue_store import stored_catalogue

    state = app.state
    pricing = getattr(state, "pricing", None)
    if pricing is None:
        with _lock:
            pricing = getattr(state, "pricing", None)
            if pricing is None:
                catalogue = stored_catalogue(state.store) or Catalogue.bundled()
                pricing = Pricing.build(pricing_config(state.config), catalogue)
                state.pricing = pricing
    return pricing


def get_pricing(request: Request, store: StoreDep) -> Pricing:
    return app_pricing(request.app)


def reset_pricing(request: Request) -> None:
    with _lock:
        request.app.state.pricing = None


def use_config(app: FastAPI, config: ConfigFile) -> None:
    """Price with ``config`` from the next request on."""
    with _lock:
        app.state.config = config
        app.state.pricing = None


PricingDep = Annotated[Pricing, Depends(get_pricing)]
