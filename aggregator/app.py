"""The aggregator's FastAPI app factory, and reloading its configuration file.

``/docs``, ``/redoc`` and ``/openapi.json`` follow the same auth as ``/v1``: with an
admin key set they need a key (admin or consumer) in ``Authorization``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from meterline import __version__
from meterline.config import ConfigError, ConfigFile, load_config
from meterline.settings import ServerSettings
from meterline.store import Store

logger = logging.getLogger(__name__)


def _docs_router() -> APIRouter:
    from meterline.aggregator.auth import get_principal

    router = APIRouter(include_in_schema=False, dependencies=[Depends(get_principal)])

    @router.get("/openapi.json")
    def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="meterline API")

    @router.get("/redoc")
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="meterline API")

    return router


def create_app(
    settings: ServerSettings,
    store: Store,
    *,
    config: ConfigFile | None = None,
    ready: Callable[[], bool] = lambda: True,
    address: tuple[str, int] | None = None,
) -> FastAPI:
    """Build the API over an opened, migrated ``store``.

    Args:
        settings: the server's settings (auth keys, config file).
        store: where usage is read.
        config: the validated configuration file (default: read ``settings.config`` now).
        ready: tells ``/healthz`` whether the collector listens yet.
        address: the (host, port) it is served on; without an admin key, requests whose
            ``Host`` names another address are refused (DNS rebinding). ``None``: not
            checked (an app not served on a socket of ours, e.g. in tests).

    Raises:
        ConfigError: ``config`` not given and ``settings.config`` is invalid.
    """
    from meterline.aggregator.auth import KeyCache
    from meterline.aggregator.routes import api_router, public_router

    app: Any = FastAPI(
        title="meterline", version=__version__, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings
    app.state.store = store
    app.state.config = config if config is not None else load_config(settings.config)
    app.state.ready = ready
    app.state.address = address
    app.state.key_cache = KeyCache(store)
    app.include_router(public_router)
    app.include_router(api_router)
    app.include_router(_docs_router())
    return app


def reload_config(app: FastAPI) -> bool:
    """Read the configuration file again and use it from the next request on.

    A file that is now missing or invalid changes nothing: the configuration in use stays,
    and one line says why. Returns whether the new file is in use.
    """
    from meterline.aggregator.routes._pricing import use_config

    path = app.state.settings.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        logger.error("configuration not reloaded, the one in use stays: %s", exc)
        return False
    use_config(app, config)
    logger.info("configuration reloaded from %s: %s", path, config.summary())
    return True
