"""The dashboards: valid, templated, with units, and their SQL — expanded as Grafana and
its ClickHouse plugin expand it (tests/dashboards/grafana_expand.py) — run through
meterline's :8123 endpoint with clickhouse-connect against a store seeded with the
hand-computed usage of tests/aggregator/test_invoices.py; the money panels equal
``/v1/invoices`` and ``/v1/usage`` for the same range, to the cent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from meterline.aggregator.app import create_app
from meterline.aggregator.cli_grafana import dashboard_text
from meterline.aggregator.grafana import DASHBOARD_UIDS, PLUGIN, build_dashboards
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator.pricing_config import write_config
from tests.aggregator.test_invoices import CALLS
from tests.clickhouse_http.conftest import PASSWORD, Endpoint, _endpoint
from tests.conftest import migrated_store
from tests.dashboards.grafana_expand import QueryContext, Variables, expand

clickhouse_connect = pytest.importorskip("clickhouse_connect")

ROOT = Path(__file__).parents[2] / "dashboards"
FILES = sorted(ROOT.glob("*.json"))
KEY = "k"
AUTH = {"authorization": f"Bearer {KEY}"}
MARCH = (utc(2026, 3, 1), utc(2026, 4, 1))

EXTRA = [
    # another consumer, a feature, a provider filter's other side, cache savings on sonnet
    Call(utc(2026, 3, 20, 10, 30), consumer="beta", provider="anthropic",
         model="claude-sonnet-4-20250514", input=30_000, cache_read=25_000, output=500,
         feature="search"),
    Call(utc(2026, 3, 20, 11), consumer="it's", model="gpt-4o", input=1_000, output=10),
    # a failed call with cached reads: acme's plan does not bill it, so it saves nothing
    Call(utc(2026, 3, 21), model="gpt-4o", input=8_000, cache_read=6_000, error="500"),
    # for the data quality panels: a stream cut short (usage estimated) and a token count
    # that is not a number (invalid: counted, never billed)
    Call(utc(2026, 3, 18, 8), consumer="acme", model="gpt-4o", input=2_000, output=50,
         attributes=(("meterline.usage.estimated", "true"),)),
    Call(utc(2026, 3, 18, 9), consumer="acme", model="gpt-4o", input=2_000, output=50,
         attributes=(("gen_ai.usage.output_tokens", "5O"),)),
]  # fmt: skip

KNOWN_EMPTY = {
    # ingest_stats is written by a running `meterline serve`, the Stripe ledger by a sync:
    # neither ran against this store
    "meterline-pipeline": {"Ingest lag", "Spans written and rejected", "Writer queue",
                           "Stripe ledger by state", "Stripe sync runs"},
    "meterline-consumer": {"Budgets"},  # only acme has a budget
}  # fmt: skip
"""Panels allowed to be empty here; every other panel of every selection has rows."""


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# --- the documents ------------------------------------------------------------------


def test_the_files_are_the_built_dashboards() -> None:
    built = {d["uid"]: d for d in build_dashboards()}
    on_disk = {json.loads(p.read_text())["uid"]: p for p in FILES}
    assert sorted(on_disk) == sorted(DASHBOARD_UIDS) == sorted(built)
    for uid, path in on_disk.items():
        assert path.read_text() == dashboard_text(built[uid]), (
            f"{path.name} is stale: run `meterline grafana write dashboards`"
        )


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_dashboard_is_valid_templated_and_has_units(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert doc["uid"] and len(doc["uid"]) <= 40 and doc["title"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == PLUGIN
    assert variables["database"]["type"] == "constant"
    refs = [n["datasource"] for n in _walk(doc) if isinstance(n.get("datasource"), dict)]
    assert refs and all(r == {"type": PLUGIN, "uid": "${datasource}"} for r in refs)
    assert doc["panels"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"] and all(t["rawSql"] for t in panel["targets"])
        for t in panel["targets"]:
            assert "${database}." in t["rawSql"] or "system." in t["rawSql"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    if doc["uid"] != "meterline-pipeline":
        assert {"consumer", "feature", "provider", "model"} <= set(variables)


def test_a_dashboard_with_a_hard_coded_uid_fails_the_check() -> None:
    doc = build_dashboards()[0]
    doc["panels"][0]["datasource"] = {"type": PLUGIN, "uid": "meterline"}
    refs = [n["datasource"] for n in _walk(doc) if isinstance(n.get("datasource"), dict)]
    assert not all(r == {"type": PLUGIN, "uid": "${datasource}"} for r in refs)


def test_provisioning_points_the_plugin_at_meterline() -> None:
    config = yaml.safe_load((ROOT / "provisioning" / "datasource.yaml").read_text())
    [ds] = config["datasources"]
    assert ds["type"] == PLUGIN and ds["uid"] == "meterline"
    data = ds["jsonData"]
    assert data["protocol"] == "http" and data["port"] == 8123
    assert data["defaultDatabase"] == "meterline" and "database" not in data
    assert ds["secureJsonData"]["password"].startswith("$")
    providers = yaml.safe_load((ROOT / "provisioning" / "dashboards.yaml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# --- the SQL against the engine -----------------------------------------------------


@pytest.fixture(scope="module")
def seeded(engine_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    for store in migrated_store(engine_dir, "dash"):
        insert_calls(store, [*CALLS, *EXTRA])
        config = write_config(tmp_path_factory.mktemp("config"))
        client = TestClient(create_app(ServerSettings(admin_key=KEY, config=config), store))
        put = client.put("/v1/budgets/acme", json={"limit": "50.00", "unit": "USD",
                                                    "period": "month"}, headers=AUTH)  # fmt: skip
        assert put.status_code in (200, 201), put.text
        for endpoint in _endpoint(store, password=PASSWORD):
            yield store, client, endpoint


def _client(ep: Endpoint):  # type: ignore[no-untyped-def]
    return clickhouse_connect.get_client(host=ep.host, port=ep.port, username="meterline",
                                         password=PASSWORD, autogenerate_session_id=False)  # fmt: skip


def _run(ch: Any, sql: str) -> list[dict[str, Any]]:
    result = ch.query(sql)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _variables(ch: Any, doc: dict[str, Any], ctx: QueryContext,
               chosen: dict[str, list[str] | str]) -> Variables:  # fmt: skip
    """Grafana's variables: each query variable's options from its own query (expanded
    too), the current values ``chosen`` (else All)."""
    v = Variables(current={})
    for var in doc["templating"]["list"]:
        if var["type"] == "constant":
            v.current[var["name"]] = var["query"]
    for var in doc["templating"]["list"]:
        if var["type"] != "query":
            continue
        rows = ch.query(expand(var["query"]["rawSql"], v, ctx)).result_rows
        v.options[var["name"]] = [str(r[0]) for r in rows]
        v.current[var["name"]] = chosen.get(var["name"], ["$__all"])
    return v


def _dashboards(store: Store) -> dict[str, dict[str, Any]]:
    return {d["uid"]: d for d in build_dashboards(database=store.database)}


def _panel_rows(ch: Any, doc: dict[str, Any], title: str, v: Variables,
                ctx: QueryContext) -> list[dict[str, Any]]:  # fmt: skip
    [panel] = [p for p in doc["panels"] if p["title"] == title]
    return _run(ch, expand(panel["targets"][0]["rawSql"], v, ctx))


def _rate(client: TestClient, start: datetime, end: datetime) -> None:
    """Rate the range's months, as ``meterline serve``'s rating loop does."""
    from meterline.aggregator.rated import ensure_rated
    from meterline.aggregator.routes._pricing import app_pricing

    ensure_rated(client.app.state.store, app_pricing(client.app), start, end)


SELECTIONS: dict[str, list[dict[str, list[str] | str]]] = {
    "meterline-overview": [{}, {"consumer": ["acme", "it's"], "provider": ["openai"]},
                           {"feature": ["search"], "model": ["claude-sonnet-4-20250514"]}],
    "meterline-consumer": [{"consumer": "acme"}, {"consumer": "beta", "feature": ["search"]},
                           {"consumer": "it's"}],
    "meterline-data-quality": [{}, {"consumer": ["acme"]}],
    "meterline-pipeline": [{}],
}  # fmt: skip


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_every_panel_runs_through_the_clickhouse_http_endpoint(seeded: Any, uid: str) -> None:
    store, client, endpoint = seeded
    _rate(client, *MARCH)
    ch = _client(endpoint)
    doc = _dashboards(store)[uid]
    # a month, and a range that neither starts nor ends on an hour, at a 5-minute interval
    for ctx in (QueryContext(*MARCH, interval_s=3600),
                QueryContext(utc(2026, 3, 5, 10, 17), utc(2026, 3, 20, 11, 43), 300.0)):  # fmt: skip
        for chosen in SELECTIONS[uid]:
            v = _variables(ch, doc, ctx, chosen)
            empty = []
            for panel in doc["panels"]:
                for target in panel["targets"]:
                    sql = expand(target["rawSql"], v, ctx)
                    assert "$" not in sql, (panel["title"], sql)
                    if not _run(ch, sql):
                        empty.append((panel["title"], sql))
            allowed = KNOWN_EMPTY.get(uid, set()) - (
                {"Budgets"} if chosen.get("consumer") == "acme" else set()
            )
            assert [e for e in empty if e[0] not in allowed] == [], (uid, chosen)


def _money(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


@pytest.mark.parametrize(
    "start,end",
    [MARCH, (utc(2026, 3, 1), utc(2026, 3, 16)), (utc(2026, 3, 16), utc(2026, 3, 20, 11))],
    ids=["month", "before-price-change", "after-price-change"],
)
def test_money_panels_equal_the_invoices_and_usage(seeded: Any, start: datetime,
                                                   end: datetime) -> None:  # fmt: skip
    store, client, endpoint = seeded
    _rate(client, start, end)
    ch = _client(endpoint)
    doc = _dashboards(store)["meterline-overview"]
    ctx = QueryContext(start, end)
    v = _variables(ch, doc, ctx, {})
    window = {"from": start.isoformat(), "to": end.isoformat()}

    by_consumer = client.get("/v1/usage", params={**window, "group_by": "consumer"},
                             headers=AUTH).json()["rows"]  # fmt: skip
    consumers = [r["consumer"] for r in by_consumer]
    invoices = {c: client.get(f"/v1/invoices/{c}", params=window, headers=AUTH).json()
                for c in consumers}  # fmt: skip

    [spend] = _panel_rows(ch, doc, "Spend", v, ctx)
    assert _money(spend["spend"]) == sum(Decimal(r["cost"]) for r in by_consumer)
    totals = {r["consumer"]: r for r in _panel_rows(ch, doc, "Invoice totals", v, ctx)}
    for c, inv in invoices.items():
        if Decimal(inv["total"]) == 0:
            assert c not in totals or _money(totals[c]["total"]) == 0
            continue
        row = totals[c]
        assert (_money(row["subtotal"]), _money(row["markup"]), _money(row["total"])) == (
            Decimal(inv["subtotal"]),
            Decimal(inv["markup"]),
            Decimal(inv["total"]),
        ), c
    top = {r["consumer"]: r for r in _panel_rows(ch, doc, "Top consumers", v, ctx)}
    for r in by_consumer:
        assert _money(top[r["consumer"]]["spend"]) == Decimal(r["cost"]), r
        assert top[r["consumer"]]["requests"] == r["requests"]
        assert top[r["consumer"]]["unpriced"] == r["unpriced_requests"]
    series = _panel_rows(ch, doc, "Spend by consumer", v, ctx)
    for r in by_consumer:
        assert sum(_money(s["spend"]) for s in series if s["consumer"] == r["consumer"]) == (
            Decimal(r["cost"])
        )

    # the token table equals /v1/usage?group_by=consumer,model
    api = client.get("/v1/usage", params={**window, "group_by": "consumer,model"},
                     headers=AUTH).json()["rows"]  # fmt: skip
    table = _panel_rows(ch, doc, "Usage by consumer and model", v, ctx)
    assert sorted((r["consumer"], r["model"], r["requests"], r["failed"], r["invalid"],
                   r["input"], r["cache_read"], r["output"]) for r in table) == sorted(
        (r["consumer"], r["model"], r["requests"], r["failed_requests"], r["invalid_requests"],
         r["input_tokens"], r["cache_read_input_tokens"], r["output_tokens"]) for r in api)  # fmt: skip


def test_cache_savings_are_cached_reads_at_the_input_price(seeded: Any) -> None:
    store, client, endpoint = seeded
    _rate(client, *MARCH)
    ch = _client(endpoint)
    doc = _dashboards(store)["meterline-overview"]
    ctx = QueryContext(*MARCH)
    # by hand (tests/aggregator/pricing_config.py): gpt-4o 4000 cached × (2.50 − 1.25);
    # sonnet 20000 × (3.00 − 0.30) and beta's 25000 × (3.00 − 0.30); o3, mystery and the
    # failed call: none
    expected = {
        (): Decimal("0.005") + Decimal("0.054") + Decimal("0.0675"),
        ("beta",): Decimal("0.0675"),
    }
    for who, value in expected.items():
        v = _variables(ch, doc, ctx, {"consumer": list(who)} if who else {})
        [row] = _panel_rows(ch, doc, "Cache savings", v, ctx)
        assert _money(row["savings"]) == value, who


def test_the_consumer_dashboard_is_one_consumers_money(seeded: Any) -> None:
    store, client, endpoint = seeded
    _rate(client, *MARCH)
    ch = _client(endpoint)
    doc = _dashboards(store)["meterline-consumer"]
    ctx = QueryContext(*MARCH)
    window = {"from": MARCH[0].isoformat(), "to": MARCH[1].isoformat()}
    for consumer in ("acme", "beta", "it's"):
        v = _variables(ch, doc, ctx, {"consumer": consumer})
        [spend] = _panel_rows(ch, doc, "Spend", v, ctx)
        [api] = client.get("/v1/usage", params={**window, "consumer": consumer},
                           headers=AUTH).json()["rows"]  # fmt: skip
        assert _money(spend["spend"]) == Decimal(api["cost"]), consumer
        models = _panel_rows(ch, doc, "By model", v, ctx)
        assert sum(_money(r["spend"]) for r in models) == Decimal(api["cost"])
    v = _variables(ch, doc, ctx, {"consumer": "acme"})
    [budget] = _panel_rows(ch, doc, "Budgets", v, ctx)
    assert (budget["feature"], budget["period"], budget["unit"]) == ("(all)", "month", "USD")
    assert _money(budget["limit"]) == Decimal("50")


@pytest.mark.parametrize(
    "chosen,params",
    [
        ({"consumer": ["acme", "it's"]}, [{"consumer": "acme"}, {"consumer": "it's"}]),
        ({"provider": ["anthropic"]}, [{"provider": "anthropic"}]),
        (
            {"feature": ["search"], "consumer": ["beta"]},
            [{"feature": "search", "consumer": "beta"}],
        ),
        ({"model": ["o3", "mystery-1"]}, [{"model": "o3"}, {"model": "mystery-1"}]),
    ],
    ids=["two-consumers-one-quoted", "provider", "feature-and-consumer", "models"],
)
def test_selections_filter_the_money_as_the_api_does(
    seeded: Any, chosen: dict[str, list[str]], params: list[dict[str, str]]
) -> None:
    store, client, endpoint = seeded
    _rate(client, *MARCH)
    ch = _client(endpoint)
    doc = _dashboards(store)["meterline-overview"]
    ctx = QueryContext(*MARCH)
    v = _variables(ch, doc, ctx, chosen)
    window = {"from": MARCH[0].isoformat(), "to": MARCH[1].isoformat()}
    expected = Decimal(0)
    for p in params:
        rows = client.get("/v1/usage", params={**window, **p}, headers=AUTH).json()["rows"]
        expected += sum((Decimal(r["cost"]) for r in rows), Decimal(0))
    [spend] = _panel_rows(ch, doc, "Spend", v, ctx)
    assert _money(spend["spend"]) == expected
    assert expected > 0 or chosen.get("model")  # mystery-1 is unpriced, o3 is not


# --- budgets in their own time zone ---------------------------------------------------


def test_the_budgets_panel_uses_each_budgets_own_period(engine_dir: Path, tmp_path: Path) -> None:
    """Budgets in Tokyo (day) and New York (month), usage an hour before and at the start
    of each one's current period: the panel's period and spend are /v1/budgets' period and
    the usage in it (on the old UTC periods, the hour before counted or the start did
    not)."""
    from datetime import UTC, timedelta

    from meterline.aggregator.budgets._window import window
    from tests.aggregator.pricing_config import CONFIG_YAML

    now = datetime.now(UTC)
    budgets = {("tokyo", "day"): "Asia/Tokyo", ("york", "month"): "America/New_York",
               ("paris", "week"): "Europe/Paris", ("o'neil", "day"): "Pacific/Kiritimati"}  # fmt: skip
    configured = "\nbudgets:\n  limits:\n    - {consumer: paris, limit: '9.00', unit: USD,"
    configured += " period: week, timezone: Europe/Paris}\n"  # in the file, not the table
    configured += "    - {consumer: \"o'neil\", limit: '1.00', unit: USD, period: day,"
    configured += " timezone: Pacific/Kiritimati}\n"
    calls = []
    for (consumer, period), zone in budgets.items():
        start, _ = window(period, now, zone)
        calls += [Call(start - timedelta(hours=1), consumer=consumer, input=100_000, output=7),
                  Call(start, consumer=consumer, input=1_000, output=900)]  # fmt: skip
    for store in migrated_store(engine_dir, "dash_tz"):
        insert_calls(store, calls)
        config = write_config(tmp_path, CONFIG_YAML + configured)
        client = TestClient(create_app(ServerSettings(admin_key=KEY, config=config), store))
        for (consumer, period), zone in list(budgets.items())[:2]:
            put = client.put(f"/v1/budgets/{consumer}", headers=AUTH, json={
                "limit": "50.00", "unit": "USD", "period": period, "timezone": zone})  # fmt: skip
            assert put.status_code in (200, 201), put.text
        _rate(client, now - timedelta(days=40), now + timedelta(hours=1))
        listed = {
            b["consumer"]: b for b in client.get("/v1/budgets", headers=AUTH).json()["budgets"]
        }
        for endpoint in _endpoint(store, password=PASSWORD):
            ch = _client(endpoint)
            # as this deployment serves it: with the configuration file's budgets
            doc = client.get("/v1/grafana/dashboards/meterline-consumer", headers=AUTH).json()
            ctx = QueryContext(now - timedelta(days=1), now)
            for (consumer, period), zone in budgets.items():
                v = _variables(ch, doc, ctx, {"consumer": consumer})
                [row] = _panel_rows(ch, doc, "Budgets", v, ctx)
                api = listed[consumer]
                assert (row["period"], row["timezone"]) == (period, zone)
                start = datetime.fromisoformat(api["period_start"])
                end = datetime.fromisoformat(api["period_end"])
                assert row["period_start"].replace(tzinfo=UTC) == start, consumer
                assert row["period_end"].replace(tzinfo=UTC) == end, consumer
                usage = client.get("/v1/usage", headers=AUTH, params={
                    "consumer": consumer, "from": start.isoformat(),
                    "to": end.isoformat()}).json()["rows"]  # fmt: skip
                [in_period] = usage
                assert in_period["requests"] == 1  # the call at the start, not the one before
                assert _money(row["spent"]) == Decimal(in_period["cost"]) > 0, consumer
                assert abs(_money(row["spent"]) - Decimal(api["spent"])) < Decimal("0.01")
