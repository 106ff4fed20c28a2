"""Tenancy (issue 9 §1): every /v1 route with every kind of caller, and attacks on the
scoping. Each body a consumer key receives is searched for every other consumer's name
and token counts (:func:`tests.aggregator._tenants.assert_no_leak`)."""

from __future__ import annotations

import csv
import io
import urllib.parse

import pytest
from fastapi.routing import APIRoute

from meterline.aggregator.auth import REQUIREMENTS
from meterline.store import Store
from tests.aggregator._tenants import (
    ADMIN_KEYS,
    NAMED,
    TENANTS,
    assert_no_leak,
    client,
    make_keys,
    tenant_app,
)

READS = [
    ("GET", "/v1/usage"),
    ("GET", "/v1/usage?group_by=consumer"),
    ("GET", "/v1/invoices/acme?period=2026-03"),
    ("GET", "/v1/invoices/zz-other?period=2026-03"),
    ("GET", "/v1/export?period=2026-03&format=json"),
    ("GET", "/v1/export?period=2026-03"),
    ("GET", "/v1/periods/2026-03"),
    ("GET", "/v1/prices?provider=openai&model=gpt-4o"),
    ("GET", "/v1/prices"),
]
ADMIN_ONLY = [
    ("POST", "/v1/periods/2026-03/finalize"),
    ("POST", "/v1/periods/2026-03/reprice?dry_run=true"),
    ("POST", "/v1/prices/update"),
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys"),
    ("DELETE", "/v1/keys/key_0000000000000000"),
]
DOCS = ["/docs", "/redoc", "/openapi.json"]
JSON = {"content-type": "application/json"}


def _call(c, method: str, path: str):
    if method == "POST" and path == "/v1/keys":
        return c.post(path, json={"consumer": "acme", "scopes": ["read"]})
    return c.request(method, path, headers=JSON if method != "GET" else None)


@pytest.fixture
def setup(store: Store, tmp_path):
    app = tenant_app(store, tmp_path)
    return app, make_keys(store)


@pytest.mark.parametrize("which", [0, 1])
def test_each_admin_key_reads_everything_and_may_change_state(setup, which: int) -> None:
    app, _ = setup
    c = client(app, ADMIN_KEYS[which])
    rows = c.get("/v1/usage", params={"group_by": "consumer"}).json()["rows"]
    assert {r["consumer"]: r["input_tokens"] for r in rows} == {
        k: v * 3 for k, v in TENANTS.items()}  # fmt: skip
    for name in NAMED:
        path = f"/v1/invoices/{urllib.parse.quote(name, safe='')}"
        assert c.get(path, params={"period": "2026-03"}).json()["consumer"] == name
    export = c.get("/v1/export", params={"period": "2026-03", "format": "json"}).json()
    assert {r["consumer"] for r in export["rows"]} >= set(NAMED)
    for method, path in READS:
        assert _call(c, method, path).status_code == 200, path
    for method, path in ADMIN_ONLY:
        if path == "/v1/prices/update":
            continue  # fetches the published prices (tests/aggregator/test_prices_update.py)
        status = _call(c, method, path).status_code
        assert status == (404 if method == "DELETE" else 201 if method == "POST" and
                          path == "/v1/keys" else 200), (path, status)  # fmt: skip
    for path in DOCS:
        assert c.get(path).status_code == 200


@pytest.mark.parametrize("who", ["acme", "zz-other"])
def test_a_consumer_key_sees_only_its_consumer_on_every_route(setup, who: str) -> None:
    app, keys = setup
    c = client(app, keys.acme if who == "acme" else keys.other)
    other = "zz-other" if who == "acme" else "acme"
    for method, path in READS:
        path = path.replace("zz-other", other) if who == "acme" else path
        response = _call(c, method, path)
        assert_no_leak(response.text, who)
        if "/invoices/" in path:
            own = path.startswith(f"/v1/invoices/{who}")
            assert response.status_code == (200 if own else 404), path
        else:
            assert response.status_code == 200, (path, response.text)
    rows = c.get("/v1/usage", params={"group_by": "consumer,model"}).json()["rows"]
    assert {r["consumer"] for r in rows} == {who}
    assert sum(r["input_tokens"] for r in rows) == TENANTS[who] * 3
    total = c.get("/v1/usage").json()["rows"]
    assert [r["input_tokens"] for r in total] == [TENANTS[who] * 3]
    export = c.get("/v1/export", params={"period": "2026-03", "format": "json"}).json()
    assert export["rows"] and {r["consumer"] for r in export["rows"]} == {who}
    csv_rows = list(csv.DictReader(io.StringIO(c.get("/v1/export?period=2026-03").text)))
    assert csv_rows and {r["consumer"] for r in csv_rows} == {who}
    for method, path in ADMIN_ONLY:
        response = _call(c, method, path)
        assert response.status_code == 403, (path, response.status_code)
        assert_no_leak(response.text, who)
    for path in DOCS:
        assert c.get(path).status_code == 200


def test_a_key_without_read_is_refused_reads(setup) -> None:
    app, keys = setup
    c = client(app, keys.acme_reserve_only)
    for method, path in READS + ADMIN_ONLY:
        response = _call(c, method, path)
        assert response.status_code == 403, path
        assert_no_leak(response.text, "acme")
    assert c.get("/v1/usage").json() == {"detail": "this route needs a key with scope 'read'"}


@pytest.mark.parametrize("kind", ["none", "revoked", "expired", "unknown", "admin-case",
                                  "consumer-case", "basic", "query-param"])  # fmt: skip
def test_no_valid_key_is_401_everywhere(setup, kind: str) -> None:
    app, keys = setup
    key = {"revoked": keys.revoked, "expired": keys.expired,
           "unknown": "ml_" + "A" * 43, "admin-case": ADMIN_KEYS[0].upper(),
           "consumer-case": keys.acme.swapcase()}.get(kind)  # fmt: skip
    c = client(app, key)
    if kind == "basic":
        c.headers["authorization"] = "Basic YWRtaW46YWRtaW4tb25lLTNmOWM="  # admin:<admin key>
    for method, path in READS + ADMIN_ONLY:
        if kind == "query-param":
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(
                {"api_key": ADMIN_KEYS[0], "key": keys.acme}
            )
        response = _call(c, method, path)
        assert response.status_code == 401, (path, response.status_code)
        assert response.headers["www-authenticate"] == "Bearer"
        for name in NAMED:
            assert name not in response.text
    for path in DOCS:
        assert c.get(path).status_code == 401


def test_usage_filters_cannot_widen_the_scope(setup) -> None:
    app, keys = setup
    c = client(app, keys.acme)
    attempts = [
        {"consumer": "zz-other"}, {"consumer": "ACME"}, {"consumer": "Acme"},
        {"consumer": ""}, {"consumer": " acme"}, {"consumer": "acme "},
        {"consumer": "acme\x00"}, {"consumer": "beta corp/é"},
        {"consumer": "zz-other", "group_by": "consumer"},
        {"consumer": "' OR 1=1 --"}, {"consumer": "acme' OR ConsumerId != '"},
    ]  # fmt: skip
    for params in attempts:
        response = c.get("/v1/usage", params=params)
        assert response.status_code == 200, params
        assert response.json()["rows"] == [], params
    for group_by in ("consumer", "consumer,model", "day,consumer", " consumer ", "model",
                     "consumer,consumer", "hour,feature,provider,consumer"):  # fmt: skip
        response = c.get("/v1/usage", params={"group_by": group_by})
        assert response.status_code == 200, group_by
        rows = response.json()["rows"]
        assert rows and sum(r["input_tokens"] for r in rows) == TENANTS["acme"] * 3, group_by
        assert all(r.get("consumer", "acme") == "acme" for r in rows)
        assert_no_leak(response.text, "acme")
    # repeated parameter, raw query strings, parameter-name variants
    for query in ("consumer=acme&consumer=zz-other", "consumer=zz-other&consumer=acme",
                  "consumer=%7A%7A-other", "consumer=ACME&group_by=consumer"):  # fmt: skip
        response = c.get("/v1/usage?" + query)
        assert_no_leak(response.text, "acme")
    for query in ("Consumer=zz-other", "scope=all", "consumer_id=zz-other"):
        assert c.get("/v1/usage?" + query).status_code == 422  # unknown parameters


def test_another_consumers_invoice_is_a_404_like_an_unknown_one(setup) -> None:
    app, keys = setup
    c = client(app, keys.acme)
    unknown = c.get("/v1/invoices/nobody-at-all?period=2026-03")
    assert unknown.status_code == 404
    for name in ("zz-other", "ACME", "Acme", "beta corp/é", " acme", "acme ", "acme%00"):
        path = f"/v1/invoices/{urllib.parse.quote(name, safe='')}"
        for query in ("?period=2026-03", "?from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z",
                      "?period=2026-13", ""):  # fmt: skip
            response = c.get(path + query)
            assert response.status_code == 404, (name, query)
            assert response.content == unknown.content, (name, query)  # same body
    assert c.get("/v1/invoices/%61cme?period=2026-03").json()["consumer"] == "acme"
    assert c.get("/v1/invoices/?period=2026-03").status_code == 404  # the empty consumer


def test_finalised_month_is_scoped_too(setup) -> None:
    app, keys = setup
    admin = client(app, ADMIN_KEYS[0])
    done = admin.post("/v1/periods/2026-03/finalize", headers=JSON)
    assert done.status_code == 200 and len(done.json()["invoices"]) == len(TENANTS)
    c = client(app, keys.acme)
    assert c.get("/v1/invoices/acme?period=2026-03").headers[
        "x-meterline-invoice-status"] == "final; revision=1"  # fmt: skip
    assert c.get("/v1/invoices/zz-other?period=2026-03").status_code == 404
    export = c.get("/v1/export", params={"period": "2026-03", "format": "json"})
    assert {r["consumer"] for r in export.json()["rows"]} == {"acme"}
    assert_no_leak(export.text, "acme")
    assert c.post("/v1/periods/2026-03/reprice", headers=JSON).status_code == 403


def test_every_v1_route_declares_what_it_needs(setup) -> None:
    """A future route without a scope or admin requirement fails here."""
    app, _ = setup

    def calls(dependant) -> set:
        found = {dependant.call}
        for sub in dependant.dependencies:
            found |= calls(sub)
        return found

    def routes(items, prefix: str = ""):
        for r in items:
            if isinstance(r, APIRoute):
                yield prefix + r.path, r
            elif hasattr(r, "original_router"):  # FastAPI >= 0.165 includes routers lazily
                inner = getattr(r, "include_context", None)
                yield from routes(r.original_router.routes,
                                  prefix + (getattr(inner, "prefix", "") or ""))  # fmt: skip

    v1 = [(p, r) for p, r in routes(app.routes) if p.startswith("/v1")]
    assert len(v1) >= 11
    for path, route in v1:
        assert calls(route.dependant) & set(REQUIREMENTS), path
