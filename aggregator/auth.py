"""Who is calling: the admin, a consumer's key, or (no admin key set) anyone local.

Contract:
- ``Authorization: Bearer <key>``. An admin key (``METERLINE_ADMIN_KEY``, several
  comma-separated to rotate one) may do everything. A consumer key
  (:mod:`meterline.aggregator.keys`) reads only its consumer's data, with its scopes:
  ``read`` (usage, invoices, export, periods, prices) or ``reserve`` (budget calls).
  Unknown, revoked or expired keys are 401; a key without the route's scope or a
  consumer key on an admin route is 403.
- Scoping is structural: a route that reads consumer data takes :data:`ScopeDep`, the
  only source of the :class:`~meterline.aggregator.tenancy.Scope` that every query
  function requires; a consumer key's scope narrows the SQL itself.
- Lookups of consumer keys are cached for :data:`KEY_CACHE_SECONDS`; creating or
  revoking a key through this API clears the cache, so in one process a revoke is
  immediate and across replicas it takes at most that long.
- With no admin key the API is open ("anyone on this machine"): ``serve`` binds it to
  loopback unless told otherwise (:func:`open_api_refusal`), and requests a browser page
  could forge are refused: the ``Host`` header must name the address served (an IP
  literal or ``localhost``, the served port), which stops DNS rebinding, and a request
  that changes state (any method but GET/HEAD/OPTIONS) without a key must say
  ``Content-Type: application/json``, which no form or ``no-cors`` fetch can send
  without a CORS preflight (and the API answers none).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from meterline.aggregator.deps import SettingsDep, StoreDep
from meterline.aggregator.keys import ApiKey, find_key
from meterline.aggregator.tenancy import Scope
from meterline.hosts import host_allowed, is_loopback
from meterline.settings import ServerSettings
from meterline.store import Store

logger = logging.getLogger(__name__)

KEY_CACHE_SECONDS = 2.0
"""How long a consumer key's lookup is reused (a revoke elsewhere waits at most this)."""
_CACHE_ENTRIES = 10_000
OPEN_WARNING = "API open to anyone on this machine: set METERLINE_ADMIN_KEY"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ADMIN_SCOPES = frozenset({"admin", "read", "reserve"})


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    role: Literal["admin", "consumer"]
    scopes: frozenset[str]
    consumer: str | None = None
    """The consumer of a consumer key."""
    key_id: str | None = None
    open: bool = False
    """No admin key is configured: nobody authenticated (loopback use)."""

    @property
    def scope(self) -> Scope:
        return Scope.ALL if self.role == "admin" else Scope.only(self.consumer or "")


ADMIN = Principal("admin", _ADMIN_SCOPES)
OPEN = Principal("admin", _ADMIN_SCOPES, open=True)


class KeyCache:
    """Consumer key lookups by hash for a few seconds (found or not)."""

    def __init__(self, store: Store, *, ttl: float = KEY_CACHE_SECONDS) -> None:
        self._store = store
        self._ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}

    def lookup(self, secret: str) -> ApiKey | None:
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(digest.hex())
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        key = find_key(self._store, secret)
        with self._lock:
            if len(self._entries) >= _CACHE_ENTRIES:
                self._entries.clear()
            self._entries[digest.hex()] = (now, key)
        return key

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _is_admin_key(given: str, keys: tuple[str, ...]) -> bool:
    """Compare with every admin key, always all of them, on equal-length digests."""
    digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    found = False
    for key in keys:
        found |= hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest())
    return found


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


# --- the open API's guard against forged browser requests ------------------------------


def _refuse_forgeable(request: Request, has_key: bool) -> None:
    served = getattr(request.app.state, "address", None)
    if served is not None and not host_allowed(request.headers.get("host"), served):
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="refused: the Host header does not name this server's address "
            "(the API has no key, so it answers only requests addressed to it)",
        )
    if has_key or request.method in _SAFE_METHODS:
        return
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise HTTPException(
            status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail="refused: without an API key, a request that changes state must be sent "
            "with Content-Type: application/json (a browser page cannot forge that)",
        )


def open_api_refusal(settings: ServerSettings) -> str | None:
    """Why ``serve`` must not start as configured, or ``None``."""
    if settings.admin_key is not None and not settings.admin_keys:
        return "METERLINE_ADMIN_KEY is set but holds no key: set a key, or unset it"
    if settings.admin_keys or settings.allow_open_api or is_loopback(settings.host):
        return None
    return (
        f"refusing to serve the API on {settings.host} without a key: anyone who can "
        "reach it could read all usage and change prices; set METERLINE_ADMIN_KEY, "
        "or pass --allow-open-api to serve it open anyway"
    )


# --- dependencies ----------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False)


def get_key_cache(request: Request, store: StoreDep) -> KeyCache:
    cache = getattr(request.app.state, "key_cache", None)
    if cache is None:
        cache = request.app.state.key_cache = KeyCache(store)
    return cache


KeyCacheDep = Annotated[KeyCache, Depends(get_key_cache)]


def get_principal(
    request: Request,
    settings: SettingsDep,
    cache: KeyCacheDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller: 401 when a key is needed and missing, unknown, revoked or expired."""
    admin_keys = settings.admin_keys
    if not admin_keys:
        _refuse_forgeable(request, credentials is not None)
    if credentials is None:
        if not admin_keys:
            return OPEN
        raise _unauthorized("missing API key: send Authorization: Bearer <key>")
    given = credentials.credentials
    if admin_keys and _is_admin_key(given, admin_keys):
        return ADMIN
    key = cache.lookup(given)
    if key is None or not key.usable(datetime.now(UTC)):
        raise _unauthorized("invalid API key (unknown, revoked or expired)")
    return Principal("consumer", frozenset(key.scopes), consumer=key.consumer, key_id=key.id)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: PrincipalDep) -> Principal:
    """403 unless the caller holds an admin key (or the API is open)."""
    if principal.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this route needs the admin key")
    return principal


def _require(scope: str):
    def require(principal: PrincipalDep) -> Principal:
        if scope not in principal.scopes:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"this route needs a key with scope {scope!r}"
            )
        return principal

    require.__name__ = f"require_{scope}"
    return require


require_read = _require("read")
"""403 unless the caller may read (admin, or a consumer key with ``read``)."""
require_reserve = _require("reserve")
"""403 unless the caller may reserve budget (admin, or a consumer key with ``reserve``)."""


def read_scope(principal: Annotated[Principal, Depends(require_read)]) -> Scope:
    """The consumers a reading caller may see: all (admin) or its own."""
    return principal.scope


AdminDep = Annotated[Principal, Depends(require_admin)]
ReadDep = Annotated[Principal, Depends(require_read)]
ScopeDep = Annotated[Scope, Depends(read_scope)]
"""Every route reading consumer data takes this and hands it to the query functions."""

REQUIREMENTS = (require_admin, require_read, require_reserve, read_scope)
"""The dependencies one of which every ``/v1`` route declares (a test checks it)."""
