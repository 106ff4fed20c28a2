"""``GET /v1/grafana/dashboards[/{uid}]``: this deployment's dashboards, admin only."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from meterline.aggregator.app import create_app
from meterline.aggregator.grafana import DASHBOARD_UIDS, PLUGIN
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator.pricing_config import write_config

AUTH = {"authorization": "Bearer k"}


def test_the_dashboards_of_this_deployment(store: Store, tmp_path: Path) -> None:
    config = write_config(tmp_path, "currency: EUR\n")
    client = TestClient(create_app(ServerSettings(admin_key="k", config=config), store))
    listed = client.get("/v1/grafana/dashboards", headers=AUTH)
    assert listed.status_code == 200, listed.text
    assert [d["uid"] for d in listed.json()["dashboards"]] == list(DASHBOARD_UIDS)
    for entry in listed.json()["dashboards"]:
        doc = client.get(entry["url"], headers=AUTH, params={"datasource_uid": "ch-prod"}).json()
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        assert variables["database"]["query"] == store.database
        assert variables["datasource"]["current"]["value"] == "ch-prod"
        assert variables["datasource"]["query"] == PLUGIN
        if entry["uid"] == "meterline-overview":
            [spend] = [p for p in doc["panels"] if p["title"] == "Spend"]
            assert spend["fieldConfig"]["defaults"]["unit"] == "currencyEUR"
    default = client.get(f"/v1/grafana/dashboards/{DASHBOARD_UIDS[0]}", headers=AUTH).json()
    [ds] = [v for v in default["templating"]["list"] if v["name"] == "datasource"]
    assert ds["current"]["value"] == "meterline"
    missing = client.get("/v1/grafana/dashboards/nope", headers=AUTH)
    assert missing.status_code == 404 and "meterline-overview" in missing.json()["detail"]
    bad = client.get("/v1/grafana/dashboards", headers=AUTH, params={"datasource_uid": "a b"})
    assert bad.status_code == 422
    assert client.get("/v1/grafana/dashboards").status_code == 401


def test_a_consumer_key_may_not_read_the_dashboards(store: Store) -> None:
    client = TestClient(create_app(ServerSettings(admin_key="k"), store))
    created = client.post("/v1/keys", json={"consumer": "acme"}, headers=AUTH)
    assert created.status_code in (200, 201), created.text
    secret = created.json()["key"]
    answer = client.get("/v1/grafana/dashboards", headers={"authorization": f"Bearer {secret}"})
    assert answer.status_code == 403


def test_no_dashboard_holds_a_secret_and_a_consumer_gets_none(store: Store) -> None:
    """A consumer key gets 403 on every dashboard route; what the admin gets names the
    datasource by uid only: neither the admin key nor the :8123 password is in it."""
    settings = ServerSettings(admin_key="k-admin-9d2f", clickhouse_http_password="ch-pw-51ce")
    client = TestClient(create_app(settings, store))
    admin = {"authorization": "Bearer k-admin-9d2f"}
    created = client.post("/v1/keys", json={"consumer": "acme"}, headers=admin)
    consumer = {"authorization": f"Bearer {created.json()['key']}"}
    paths = ["/v1/grafana/dashboards", *(f"/v1/grafana/dashboards/{u}" for u in DASHBOARD_UIDS),
             "/v1/grafana/dashboards/nope", "/v1/grafana/dashboards?datasource_uid=x"]  # fmt: skip
    for path in paths:
        answer = client.get(path, headers=consumer)
        assert answer.status_code == 403, path
        assert "meterline-overview" not in answer.text and "ch-pw" not in answer.text
    for path in paths[:-2]:
        text = client.get(path, headers=admin).text
        assert "k-admin-9d2f" not in text and "ch-pw-51ce" not in text, path
        assert "password" not in text.lower(), path
