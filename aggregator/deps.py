"""Shared FastAPI dependencies: the store and the settings (auth: :mod:`.auth`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from meterline.settings import ServerSettings
from meterline.store import Store


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_settings(request: Request) -> ServerSettings:
    return request.app.state.settings


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
