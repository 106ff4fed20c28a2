"""API keys (admin only): ``POST /v1/keys`` creates one (its secret shown once),
``GET /v1/keys`` lists them (no secrets), ``DELETE /v1/keys/{id}`` revokes one at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from meterline.aggregator.auth import get_key_cache, require_admin
from meterline.aggregator.deps import StoreDep
from meterline.aggregator.keys import (
    MAX_CONSUMER_LENGTH,
    MAX_NAME_LENGTH,
    SCOPES,
    ApiKeyError,
    KeyNotFound,
    create_key,
    list_keys,
    revoke_key,
)

router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[Depends(require_admin)])


class KeyCreate(BaseModel):
    """``POST /v1/keys``'s body; unknown fields are rejected (422)."""

    model_config = ConfigDict(extra="forbid")

    consumer: str = Field(min_length=1, max_length=MAX_CONSUMER_LENGTH)
    scopes: list[str] = Field(default_factory=lambda: ["read"], description=", ".join(SCOPES))
    name: str = Field("", max_length=MAX_NAME_LENGTH)
    expires_at: datetime | None = Field(None, description="ISO-8601; null: never")


def _forget_lookups(request: Request) -> None:
    get_key_cache(request, request.app.state.store).clear()


@router.post("", status_code=status.HTTP_201_CREATED)
def post_key(body: KeyCreate, store: StoreDep, request: Request) -> dict[str, Any]:
    """Create a consumer key; the response's ``key`` is the only time it is shown."""
    try:
        key, secret = create_key(store, consumer=body.consumer, scopes=body.scopes,
                                 name=body.name, expires_at=body.expires_at)  # fmt: skip
    except ApiKeyError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    _forget_lookups(request)
    public = key.to_dict()
    return {"id": key.id, "key": secret} | {k: v for k, v in public.items() if k != "id"}


@router.get("")
def get_keys(
    store: StoreDep, consumer: Annotated[str | None, Query(description="One consumer's")] = None
) -> dict[str, Any]:
    return {"keys": [k.to_dict() for k in list_keys(store, consumer=consumer)]}


@router.delete("/{key_id}")
def delete_key(key_id: str, store: StoreDep, request: Request) -> dict[str, Any]:
    """Revoke a key: refused from the next request on (idempotent)."""
    try:
        key = revoke_key(store, key_id)
    except KeyNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    _forget_lookups(request)
    return key.to_dict()
