"""Consumer-scoped API keys: create, list, revoke, and find the key a request carries.

Contract:
- A key is ``ml_`` + 43 URL-safe characters (``secrets.token_urlsafe(32)``: 256 random
  bits). It is returned once, by :func:`create_key`; the store keeps only its SHA-256.
  A fast hash is right here and a password hash (bcrypt, argon2) is not: those are slow
  on purpose so that guessing a *low-entropy* password from its hash is expensive, but
  nobody can enumerate 2^256 random keys at any speed, and the slow hash would be paid
  on every API request (~50-300 ms each). A keyed hash (a server-side pepper) would add
  nothing against 256-bit secrets and tie every key to one more secret to keep.
- A key belongs to one consumer (never empty: ``""`` holds unattributed usage of
  everyone) and has scopes (:data:`SCOPES`); it may expire. Revoking is terminal and
  takes effect at the next lookup (reads use ``FINAL``); the API's cache of lookups
  lives for seconds (:mod:`meterline.aggregator.auth`).
- Key ids (``key_`` + 16 hex digits) are not secret: they name a key in lists and in
  ``DELETE /v1/keys/{id}``.

Known limit: on a replicated ClickHouse behind a load balancer, a revoke is seen by a
replica once replication delivered it (seconds); ``select_sequential_consistency``
would close that gap at a cost on every read.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from meterline.aggregator.queries import keys as sql
from meterline.errors import MeterlineError
from meterline.store import Store

logger = logging.getLogger(__name__)

KEY_PREFIX = "ml_"
"""Every consumer key starts with it (recognisable in logs and by secret scanners)."""
SCOPES = ("read", "reserve")
"""``read``: its usage, invoices, export, prices and budget state; ``reserve``: the
budget guard's reserve and settle calls."""
MAX_CONSUMER_LENGTH = 1024
MAX_NAME_LENGTH = 200


class ApiKeyError(MeterlineError, ValueError):
    """A key cannot be created as asked (bad consumer, scope or expiry)."""


class KeyNotFound(MeterlineError, LookupError):
    """No key has this id."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never its secret)."""

    id: str
    consumer: str
    scopes: tuple[str, ...]
    name: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def usable(self, at: datetime) -> bool:
        """Not revoked and not expired at ``at``."""
        return self.revoked_at is None and (self.expires_at is None or at < self.expires_at)

    def status(self, at: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.usable(at) else "expired"

    def to_dict(self, *, at: datetime | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "consumer": self.consumer,
            "scopes": list(self.scopes),
            "name": self.name,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "status": self.status(at or datetime.now(UTC)),
        }


def _iso(value: datetime | None) -> str | None:
    return (
        None if value is None else value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)  # DateTime64(3)


def key_hash(secret: str) -> str:
    """What the store keeps of a key: its SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    given = tuple(dict.fromkeys(scopes))
    unknown = [s for s in given if s not in SCOPES]
    if unknown:
        raise ApiKeyError(f"unknown scope {unknown[0]!r}, allowed: {', '.join(SCOPES)}")
    if not given:
        raise ApiKeyError(f"a key needs at least one scope ({', '.join(SCOPES)})")
    return tuple(s for s in SCOPES if s in given)


def create_key(
    store: Store,
    *,
    consumer: str,
    scopes: Iterable[str] = ("read",),
    name: str = "",
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``consumer``; return it and its secret (shown once).

    Raises:
        ApiKeyError: an empty or overlong consumer id or name, an unknown scope, an
            expiry in the past.
    """
    if not consumer:
        raise ApiKeyError(
            "a key needs a consumer id (the empty consumer holds unattributed usage; "
            "use the admin key to read it)"
        )
    if len(consumer) > MAX_CONSUMER_LENGTH:
        raise ApiKeyError(f"consumer id longer than {MAX_CONSUMER_LENGTH} characters")
    if len(name) > MAX_NAME_LENGTH:
        raise ApiKeyError(f"key name longer than {MAX_NAME_LENGTH} characters")
    created = _utc(now or datetime.now(UTC))
    assert created is not None
    expires = _utc(expires_at)
    if expires is not None and expires <= created:
        raise ApiKeyError(f"expires_at {_iso(expires)} is not in the future")
    key = ApiKey(
        id="key_" + secrets.token_hex(8),
        consumer=consumer,
        scopes=_scopes(scopes),
        name=name,
        created_at=created,
        expires_at=expires,
    )
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    _insert(store, key, key_hash(secret), version=0)
    logger.info("API key %s created for consumer %r (%s)", key.id, consumer, ",".join(key.scopes))
    return key, secret


def _insert(store: Store, key: ApiKey, digest: str, *, version: int) -> None:
    row = [key.id, digest, key.consumer, list(key.scopes), key.name, key.created_at,
           key.expires_at, key.revoked_at, version]  # fmt: skip
    store.insert_columns("api_keys", [[v] for v in row], sql.KEY_COLUMNS)


def _key(row: tuple[Any, ...]) -> tuple[ApiKey, str]:
    key_id, digest, consumer, scopes, name, created, expires, revoked = row
    key = ApiKey(str(key_id), str(consumer), tuple(scopes), str(name), _utc(created),  # type: ignore[arg-type]
                 _utc(expires), _utc(revoked))  # fmt: skip
    return key, str(digest)


def list_keys(store: Store, *, consumer: str | None = None) -> list[ApiKey]:
    """Every key (or ``consumer``'s), oldest first, revoked ones included."""
    params = {"all": int(consumer is None), "consumer": consumer or ""}
    _, rows = store.query(sql.LIST_SQL, params)
    return [_key(r)[0] for r in rows]


def get_key(store: Store, key_id: str) -> ApiKey:
    """The key ``key_id``; :class:`KeyNotFound` if there is none."""
    _, rows = store.query(sql.BY_ID_SQL, {"id": key_id})
    if not rows:
        raise KeyNotFound(f"no API key {key_id!r}")
    return _key(rows[0])[0]


def revoke_key(store: Store, key_id: str, *, now: datetime | None = None) -> ApiKey:
    """Revoke ``key_id`` (idempotent: a revoked key stays revoked as it was).

    Raises:
        KeyNotFound: no key has this id.
    """
    _, rows = store.query(sql.BY_ID_SQL, {"id": key_id})
    if not rows:
        raise KeyNotFound(f"no API key {key_id!r}")
    key, digest = _key(rows[0])
    if key.revoked_at is not None:
        return key
    revoked = ApiKey(key.id, key.consumer, key.scopes, key.name, key.created_at,
                     key.expires_at, _utc(now or datetime.now(UTC)))  # fmt: skip
    _insert(store, revoked, digest, version=1)
    logger.info("API key %s of consumer %r revoked", key.id, key.consumer)
    return revoked


def find_key(store: Store, secret: str) -> ApiKey | None:
    """The stored key whose secret is ``secret`` (usable or not), or ``None``."""
    if not secret.startswith(KEY_PREFIX):
        return None
    _, rows = store.query(sql.BY_HASH_SQL, {"hash": key_hash(secret)})
    return _key(rows[0])[0] if rows else None
