"""The API without an admin key (issue 9 §2): open on loopback, but requests a browser
page could forge are refused — a Host that is not the address served (DNS rebinding)
and state changes not sent as JSON (HTML forms, ``text/plain`` fetches)."""

from __future__ import annotations

import pytest

from meterline.aggregator.auth import open_api_refusal
from meterline.hosts import host_allowed
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator._tenants import ADMIN_KEYS, client, make_keys, tenant_app

SERVED = ("127.0.0.1", 8080)
BASE = "http://127.0.0.1:8080"
CHANGES = [
    ("POST", "/v1/periods/2026-03/finalize"),
    ("POST", "/v1/periods/2026-03/reprice"),
    ("POST", "/v1/prices/update"),
    ("POST", "/v1/keys"),
    ("DELETE", "/v1/keys/key_0000000000000000"),
]


@pytest.fixture
def open_api(store: Store, tmp_path):
    return tenant_app(store, tmp_path, admin_key=None, address=SERVED)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "multipart/form-data; boundary=x"},
        {"content-type": "text/plain"},
        {"content-type": "text/plain; charset=utf-8; x=application/json"},
        {"content-type": "application/jsonp"},
        {"content-type": "application/json-seq"},
    ],
)
def test_state_changes_a_browser_could_forge_are_refused(open_api, headers) -> None:
    c = client(open_api, base_url=BASE)
    for method, path in CHANGES:
        response = c.request(method, path, headers=headers, content=b'{"consumer": "acme"}')
        assert response.status_code == 415, (path, headers, response.status_code)
        assert "Content-Type: application/json" in response.json()["detail"]
    assert c.get("/v1/periods/2026-03").json()["status"] == "open"  # nothing finalised
    assert c.get("/v1/keys").json() == {"keys": []}  # no key created


@pytest.mark.parametrize("media", ["application/json", "application/json; charset=utf-8",
                                   "Application/JSON"])  # fmt: skip
def test_json_state_changes_work_on_the_open_api(open_api, media: str) -> None:
    c = client(open_api, base_url=BASE)
    headers = {"content-type": media}
    done = c.post("/v1/periods/2026-03/finalize", headers=headers)
    assert done.status_code == 200
    made = c.post("/v1/keys", content=b'{"consumer": "acme"}', headers=headers)
    assert made.status_code == 201
    assert c.delete(f"/v1/keys/{made.json()['id']}", headers=headers).status_code == 200


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8080", "127.0.0.1:9999", "localhost:8081", "127.0.0.1",
     "127.0.0.1.evil.example:8080", "localhost.evil.example:8080", "127.0.0.1:8080@evil",
     "127.0.0.1:8080:8080", "[::1", "[::1]x:8080", "0.0.0.0:8080", "10.0.0.1:8080",
     ":8080", "127.0.0.1:+8080", "127.0.0.1: 8080"],
)  # fmt: skip
def test_a_host_other_than_the_served_address_is_refused(open_api, host: str) -> None:
    c = client(open_api, base_url=BASE)
    for method, path in [("GET", "/v1/usage?group_by=consumer"), ("GET", "/docs"),
                         ("GET", "/openapi.json"), *CHANGES]:  # fmt: skip
        response = c.request(
            method, path, headers={"host": host, "content-type": "application/json"}
        )
        assert response.status_code == 403, (host, path)
        assert "Host" in response.json()["detail"]
        assert "acme" not in response.text


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080",
                                  "[::1]:8080", "127.0.0.2:8080"])  # fmt: skip
def test_loopback_names_of_the_served_address_work(open_api, host: str) -> None:
    c = client(open_api, base_url=BASE)
    response = c.get("/v1/usage", headers={"host": host})
    assert response.status_code == 200
    assert c.get("/docs", headers={"host": host}).status_code == 200


def test_host_rules() -> None:
    assert host_allowed("127.0.0.1:80", ("127.0.0.1", 80))
    assert host_allowed("127.0.0.1", ("127.0.0.1", 80))  # the default port may be left out
    assert not host_allowed(None, SERVED) and not host_allowed("", SERVED)
    # served on every address (only with --allow-open-api): IP literals, never names
    assert host_allowed("192.168.1.7:8080", ("0.0.0.0", 8080))
    assert host_allowed("[fe80::1]:8080", ("::", 8080))
    assert not host_allowed("intranet.example:8080", ("0.0.0.0", 8080))
    # served on one address: that one (and loopback names only when it is loopback)
    assert host_allowed("10.1.2.3:8080", ("10.1.2.3", 8080))
    assert not host_allowed("localhost:8080", ("10.1.2.3", 8080))
    assert not host_allowed("10.1.2.4:8080", ("10.1.2.3", 8080))


def test_a_consumer_key_is_still_scoped_on_the_open_api(open_api, store: Store) -> None:
    keys = make_keys(store)
    c = client(open_api, keys.acme, base_url=BASE)
    rows = c.get("/v1/usage", params={"group_by": "consumer"}).json()["rows"]
    assert [r["consumer"] for r in rows] == ["acme"]
    assert c.post("/v1/periods/2026-03/finalize",
                  headers={"content-type": "application/json"}).status_code == 403  # fmt: skip
    assert client(open_api, keys.revoked, base_url=BASE).get("/v1/usage").status_code == 401


def test_with_a_key_set_browser_rules_do_not_apply_but_the_key_does(store, tmp_path) -> None:
    api = tenant_app(store, tmp_path, address=SERVED)
    c = client(api, ADMIN_KEYS[0], base_url=BASE)
    form = {"content-type": "application/x-www-form-urlencoded", "host": "meterline.internal"}
    assert c.post("/v1/periods/2026-03/finalize", headers=form).status_code == 200
    anonymous = client(api, base_url=BASE)
    for path in ("/docs", "/redoc", "/openapi.json", "/v1/usage"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.get("/healthz").status_code == 200


def test_serve_refuses_an_open_api_beyond_loopback() -> None:
    assert open_api_refusal(ServerSettings()) is None
    assert open_api_refusal(ServerSettings(host="::1")) is None
    assert open_api_refusal(ServerSettings(host="localhost")) is None
    assert open_api_refusal(ServerSettings(host="0.0.0.0", admin_key="k")) is None
    assert open_api_refusal(ServerSettings(host="0.0.0.0", allow_open_api=True)) is None
    for host in ("0.0.0.0", "::", "192.168.1.7", "example.internal"):
        refusal = open_api_refusal(ServerSettings(host=host))
        assert refusal and "METERLINE_ADMIN_KEY" in refusal and "--allow-open-api" in refusal
    for blank in ("", " ", ",", " , "):
        refusal = open_api_refusal(ServerSettings(admin_key=blank))
        assert refusal == "METERLINE_ADMIN_KEY is set but holds no key: set a key, or unset it"


def test_clickhouse_http_without_a_password_checks_the_host_too(store: Store) -> None:
    """:8123 without an admin key answers reads to anyone local: a rebinding page must
    not read everyone's usage there either."""
    pytest.importorskip("chdb")
    from fastapi.testclient import TestClient

    from tests.aggregator.test_keys import _ch_app

    app = _ch_app(store, ServerSettings(clickhouse_http_port=0))
    port = app.state.clickhouse_http.address[1]
    ch = TestClient(app, base_url=f"http://127.0.0.1:{port}")
    assert ch.post("/", content="SELECT 1").text == "1\n"
    assert ch.post("/", content="SELECT 1", headers={"host": f"localhost:{port}"}).text == "1\n"
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}"):
        response = ch.post("/", content="SELECT 1", headers={"host": host})
        assert response.status_code == 403 and "Host" in response.text, host
