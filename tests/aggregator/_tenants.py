"""Test support: several consumers with names and token counts that cannot be mistaken
for one another, the keys of each kind, and a leak check over response bodies."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from meterline.aggregator.app import create_app
from meterline.aggregator.keys import create_key, revoke_key
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator.pricing_config import write_config

ADMIN_KEYS = ("admin-one-3f9c", "admin-two-77d1")

# consumer -> its distinctive input token count (no count, doubled or tripled, is part of
# another consumer's numbers)
TENANTS: dict[str, int] = {
    "acme": 130_717,
    "ACME": 248_093,  # a case variant is another consumer
    "beta corp/é": 362_459,  # needs URL encoding
    "zz-other": 575_861,
    "": 491_327,  # unattributed usage of everyone
}
NAMED = [c for c in TENANTS if c]


def tenant_calls() -> list[Call]:
    calls = []
    for consumer, tokens in TENANTS.items():
        calls.append(Call(utc(2026, 3, 3), consumer=consumer, model="gpt-4o", input=tokens,
                          output=tokens // 1000))  # fmt: skip
        calls.append(Call(utc(2026, 3, 20, 12), consumer=consumer, model="mystery-1",
                          input=tokens * 2, output=7))  # fmt: skip
    return calls


def markers_of(consumer: str) -> list[str]:
    """What must not appear in a body shown to ``consumer``: other consumers' names and
    token counts (their own and doubled)."""
    out = []
    for other, tokens in TENANTS.items():
        if other == consumer:
            continue
        if other:
            out += [other, urllib.parse.quote(other), json.dumps(other)[1:-1]]
        out += [str(tokens), str(tokens * 2), str(tokens * 3)]
    return out


def assert_no_leak(body: str, consumer: str) -> None:
    for marker in markers_of(consumer):
        assert marker not in body, f"{marker!r} leaked to {consumer!r}: {body[:300]}"


@dataclass
class Keys:
    acme: str
    acme_reserve_only: str
    other: str
    revoked: str
    expired: str


def make_keys(store: Store) -> Keys:
    _, acme_secret = create_key(store, consumer="acme", scopes=["read"], name="acme-prod")
    _, reserve = create_key(store, consumer="acme", scopes=["reserve"])
    _, other = create_key(store, consumer="zz-other", scopes=["read", "reserve"])
    gone, revoked = create_key(store, consumer="acme", scopes=["read"])
    revoke_key(store, gone.id)
    past = datetime.now(UTC) - timedelta(days=2)
    _, expired = create_key(store, consumer="acme", scopes=["read"], now=past,
                            expires_at=past + timedelta(days=1))  # fmt: skip
    return Keys(acme_secret, reserve, other, revoked, expired)


def tenant_app(store: Store, tmp_path, *, admin_key: str | None = ",".join(ADMIN_KEYS), **kw):
    insert_calls(store, tenant_calls())
    settings = ServerSettings(config=write_config(tmp_path), admin_key=admin_key)
    return create_app(settings, store, **kw)


def client(app, key: str | None = None, **kw) -> TestClient:
    c = TestClient(app, raise_server_exceptions=False, **kw)
    if key is not None:
        c.headers["authorization"] = f"Bearer {key}"
    return c
