"""The aggregator's FastAPI app factory."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from meterline import __version__
from meterline.settings import ServerSettings
from meterline.store import Store


def create_app(
    settings: ServerSettings, store: Store, *, ready: Callable[[], bool] = lambda: True
) -> FastAPI:
    """Build the API over an opened, migrated ``store``.

    Args:
        settings: the server's settings (auth keys, config file).
        store: where usage is read.
        ready: tells ``/healthz`` whether the collector listens yet.
    """
    from meterline.aggregator.routes import api_router, public_router

    app = FastAPI(title="meterline", version=__version__)
    app.state.settings = settings
    app.state.store = store
    app.state.ready = ready
    app.include_router(public_router)
    app.include_router(api_router)
    return app
