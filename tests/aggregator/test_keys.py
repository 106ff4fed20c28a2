"""API keys (issue 9 §1): create / list / revoke through the API and the CLI, stored as
hashes only, revocation without a restart, expiry, several admin keys, and :8123 staying
the admin's."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from meterline.aggregator.auth import KEY_CACHE_SECONDS, KeyCache
from meterline.aggregator.keys import KEY_PREFIX, create_key, key_hash
from meterline.cli import app as cli_app
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator._tenants import ADMIN_KEYS, client, tenant_app

runner = CliRunner()
FIELDS = {"id", "key", "consumer", "scopes", "name", "created_at", "expires_at"}


@pytest.fixture
def api(store: Store, tmp_path: Path):
    return tenant_app(store, tmp_path)


def test_create_returns_the_key_once_and_stores_only_its_hash(api, store: Store) -> None:
    admin = client(api, ADMIN_KEYS[0])
    response = admin.post("/v1/keys", json={"consumer": "acme", "scopes": ["read", "reserve"],
                                            "name": "acme-prod", "expires_at": None})  # fmt: skip
    assert response.status_code == 201
    created = response.json()
    assert set(created) >= FIELDS
    secret = created["key"]
    assert secret.startswith(KEY_PREFIX) and len(secret) == len(KEY_PREFIX) + 43
    assert created["consumer"] == "acme" and created["scopes"] == ["read", "reserve"]
    assert created["name"] == "acme-prod" and created["expires_at"] is None
    assert created["id"].startswith("key_")
    # the store: the hash, never the secret
    raw = store.query("SELECT * FROM {db}.api_keys")[1]
    assert secret not in repr(raw) and secret[len(KEY_PREFIX) :] not in repr(raw)
    assert key_hash(secret) == hashlib.sha256(secret.encode()).hexdigest() in repr(raw)
    # listed without secrets or hashes; the key works
    listed = admin.get("/v1/keys").json()["keys"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and secret not in json.dumps(listed)
    assert key_hash(secret) not in json.dumps(listed)
    assert listed[0]["status"] == "active"
    assert client(api, secret).get("/v1/usage").status_code == 200
    assert admin.get("/v1/keys", params={"consumer": "nobody"}).json() == {"keys": []}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"consumer": ""}, "at least 1 character"),
        ({"consumer": "acme", "scopes": ["admin"]}, "unknown scope 'admin'"),
        ({"consumer": "acme", "scopes": ["READ"]}, "unknown scope 'READ'"),
        ({"consumer": "acme", "scopes": []}, "at least one scope"),
        ({"consumer": "acme", "expires_at": "2020-01-01T00:00:00Z"}, "is not in the future"),
        ({"consumer": "acme", "role": "admin"}, "Extra inputs are not permitted"),
        ({"scopes": ["read"]}, "Field required"),
        ({"consumer": "x" * 1025}, "at most 1024 characters"),
    ],
)
def test_bad_key_requests_are_422(api, body: dict, message: str) -> None:
    response = client(api, ADMIN_KEYS[1]).post("/v1/keys", json=body)
    assert response.status_code == 422 and message in response.text


def test_revoke_is_immediate_without_a_restart(api) -> None:
    admin = client(api, ADMIN_KEYS[0])
    created = admin.post("/v1/keys", json={"consumer": "acme"}).json()
    user = client(api, created["key"])
    assert user.get("/v1/usage").status_code == 200  # cached now
    revoked = admin.delete(f"/v1/keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert user.get("/v1/usage").status_code == 401
    assert user.get("/v1/invoices/acme?period=2026-03").status_code == 401
    again = admin.delete(f"/v1/keys/{created['id']}")  # idempotent
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert admin.delete("/v1/keys/key_ffffffffffffffff").status_code == 404
    assert [k["status"] for k in admin.get("/v1/keys").json()["keys"]] == ["revoked"]


def test_a_revoke_by_another_replica_is_seen_within_the_cache_time(store, tmp_path) -> None:
    """Two apps over one store (replicas): the one that did not revoke stops accepting
    the key once its cached lookup is older than the cache time."""
    assert KEY_CACHE_SECONDS <= 5
    one = tenant_app(store, tmp_path)
    two = tenant_app(store, tmp_path / "..")
    two.state.key_cache = KeyCache(store, ttl=0.3)
    created = client(one, ADMIN_KEYS[0]).post("/v1/keys", json={"consumer": "acme"}).json()
    assert client(two, created["key"]).get("/v1/usage").status_code == 200
    assert client(one, ADMIN_KEYS[0]).delete(f"/v1/keys/{created['id']}").status_code == 200
    time.sleep(0.35)
    assert client(two, created["key"]).get("/v1/usage").status_code == 401


def test_expiry_takes_effect_while_running(api, store: Store) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    _, secret = create_key(store, consumer="acme", expires_at=soon)
    user = client(api, secret)
    assert user.get("/v1/usage").status_code == 200
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    assert user.get("/v1/usage").status_code == 401  # even with the lookup cached
    listed = client(api, ADMIN_KEYS[0]).get("/v1/keys").json()["keys"]
    assert [k["status"] for k in listed] == ["expired"]


def test_several_admin_keys_and_their_spelling(store: Store, tmp_path: Path) -> None:
    api = tenant_app(store, tmp_path, admin_key=" old-key-1 , new-key-2,")
    for key in ("old-key-1", "new-key-2"):
        assert client(api, key).get("/v1/keys").status_code == 200
    for key in ("old-key-1 , new-key-2", "old-key-1,new-key-2", "old-key", "old-key-1x"):
        assert client(api, key).get("/v1/keys").status_code == 401, key
    assert ServerSettings(admin_key="a,b").admin_keys == ("a", "b")


def _ch_app(store: Store, settings: ServerSettings):
    """The :8123 app exactly as ``meterline serve`` wires it."""
    from meterline.server import _clickhouse_http

    listener = _clickhouse_http(settings, store)
    assert listener is not None
    listener.sock.close()
    return listener.server.config.app


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_clickhouse_http_takes_any_admin_key_and_never_a_consumer_key(store: Store) -> None:
    pytest.importorskip("chdb")
    _, consumer = create_key(store, consumer="acme", scopes=["read", "reserve"])
    settings = ServerSettings(admin_key=",".join(ADMIN_KEYS), clickhouse_http_port=0)
    ch = TestClient(_ch_app(store, settings))
    for key in ADMIN_KEYS:
        assert ch.post("/", content="SELECT 1", headers=_basic("meterline", key)).text == "1\n"
    for headers in (_basic("meterline", consumer), _basic("acme", consumer),
                    {"x-clickhouse-user": "meterline", "x-clickhouse-key": consumer},
                    {"authorization": f"Bearer {consumer}"},
                    _basic("meterline", ",".join(ADMIN_KEYS)), {}):  # fmt: skip
        response = ch.post("/", content="SELECT 1", headers=headers)
        assert response.status_code in (401, 403), headers
    params = {"user": "meterline", "password": consumer}
    assert ch.post("/", content="SELECT 1", params=params).status_code == 403


# --- the CLI -----------------------------------------------------------------------------


def _invoke(*args: str) -> str:
    result = runner.invoke(cli_app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout  # stderr names the store opened


def test_cli_on_the_local_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    where = ["--data-dir", store.data_dir, "--database", store.database]
    text = _invoke("keys", "create", "--consumer", "acme", "--scope", "read", "--scope",
                   "reserve", "--name", "acme-prod", *where)  # fmt: skip
    secret = text.splitlines()[0]
    assert secret.startswith(KEY_PREFIX) and "cannot be shown again" in text
    listed = json.loads(_invoke("keys", "list", "--format", "json", *where))["keys"]
    assert [(k["consumer"], k["scopes"], k["status"]) for k in listed] == [
        ("acme", ["read", "reserve"], "active")]  # fmt: skip
    assert secret not in _invoke("keys", "list", *where)
    assert "revoked at" in _invoke("keys", "revoke", listed[0]["id"], *where)
    bad = runner.invoke(cli_app, ["keys", "revoke", "key_nope", *where])
    assert bad.exit_code == 1 and "no API key 'key_nope'" in bad.output
    bad = runner.invoke(cli_app, ["keys", "create", "--consumer", "acme", "--scope", "write",
                                  *where])  # fmt: skip
    assert bad.exit_code == 1 and "unknown scope 'write'" in bad.output


@pytest.fixture
def running(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The API served by uvicorn on loopback, the CLI pointed at it."""
    import uvicorn

    api = tenant_app(store, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    monkeypatch.setenv("METERLINE_API_URL", f"http://127.0.0.1:{port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_cli_through_the_api(running: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERLINE_API_KEY", ADMIN_KEYS[1])
    created = json.loads(_invoke("keys", "create", "--consumer", "zz-other", "--format", "json"))
    assert set(created) >= FIELDS and created["scopes"] == ["read"]
    assert created["id"] in _invoke("keys", "list")
    monkeypatch.setenv("METERLINE_API_KEY", created["key"])  # the consumer's own key
    invoice = json.loads(_invoke("invoice", "zz-other", "--period", "2026-03", "--format", "json"))
    assert invoice["consumer"] == "zz-other"
    denied = runner.invoke(cli_app, ["invoice", "acme", "--period", "2026-03"])
    assert denied.exit_code == 1 and denied.output.endswith(": 404 Not Found\n")
    denied = runner.invoke(cli_app, ["keys", "list"])
    assert denied.exit_code == 1 and "403 this route needs the admin key" in denied.output
    monkeypatch.setenv("METERLINE_API_KEY", ADMIN_KEYS[0])
    _invoke("keys", "revoke", created["id"])
    monkeypatch.setenv("METERLINE_API_KEY", created["key"])
    gone = runner.invoke(cli_app, ["invoice", "zz-other", "--period", "2026-03"])
    assert gone.exit_code == 1 and "401 invalid API key" in gone.output


def test_401_without_api_key_names_the_variable(running: str, monkeypatch) -> None:
    monkeypatch.delenv("METERLINE_API_KEY", raising=False)
    monkeypatch.setenv("METERLINE_ADMIN_KEY", ADMIN_KEYS[0])
    result = runner.invoke(cli_app, ["invoice", "acme", "--period", "2026-03"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "401" in lines[0]
    assert "METERLINE_API_KEY is not set" in lines[0] and "METERLINE_ADMIN_KEY" in lines[0]
    monkeypatch.delenv("METERLINE_ADMIN_KEY")
    result = runner.invoke(cli_app, ["keys", "list"])
    assert result.exit_code == 1 and "set METERLINE_API_KEY" in result.output
