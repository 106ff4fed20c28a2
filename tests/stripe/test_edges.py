"""The sync's edges a user hits (issue 10 §2-§4, review R10): exit codes, customers Stripe
does not have, consumers deliberately not billed through Stripe, bad assignments. Real
spans, the official SDK, the stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from meterline.aggregator.invoices import load_store_pricing
from meterline.aggregator.stripe import (
    Ledger,
    load_stripe_config,
    run_sync,
)
from meterline.cli import app
from meterline.store import Store
from meterline.stripe_standin import StandinServer
from tests.aggregator._calls import Call, insert_calls
from tests.stripe._support import client_for, hours_ago, standin, write_config

runner = CliRunner()


@pytest.fixture
def fake() -> Iterator[StandinServer]:
    server = standin()
    try:
        yield server
    finally:
        server.stop()


class Env:
    def __init__(self, store: Store, tmp_path: Path, fake: StandinServer) -> None:
        self.store, self.fake = store, fake
        self.path = write_config(tmp_path)
        self.config = load_stripe_config(self.path)
        self.pricing = load_store_pricing(store, self.path)

    def sync(self, client: Any = None, **kw: Any) -> Any:
        kw.setdefault("api", "v1")
        client = client or client_for(self.fake, attempts=2)
        return run_sync(self.store, self.config, pricing=self.pricing, client=client, **kw)

    def cli(self, *args: str, monkeypatch: pytest.MonkeyPatch) -> Any:
        monkeypatch.delenv("METERLINE_API_URL", raising=False)
        monkeypatch.setenv("STRIPE_API_KEY", self.fake.api_key)
        monkeypatch.setenv("METERLINE_STRIPE_API_BASE", self.fake.base_addresses["api"])
        monkeypatch.setenv(
            "METERLINE_STRIPE_METER_EVENTS_BASE", self.fake.base_addresses["meter_events"]
        )
        return runner.invoke(app, ["stripe", *args, "--data-dir", str(self.store.data_dir),
                                   "--database", self.store.database,
                                   "--config", str(self.path)])  # fmt: skip


@pytest.fixture
def env(store: Store, tmp_path: Path, fake: StandinServer) -> Env:
    return Env(store, tmp_path, fake)


def _seed(store: Store, consumers: tuple[str, ...] = ("acme", "globex")) -> None:
    insert_calls(store, [Call(at=hours_ago(h) + timedelta(minutes=7), consumer=c, input=100 + h,
                              output=10 + h) for h in (2, 3) for c in consumers])  # fmt: skip


def _meter_posts(fake: StandinServer) -> int:
    return sum(1 for r in fake.state.requests if r[1] == "/v1/billing/meter_events")


# --- 1. a sync that could not send says so ------------------------------------------------------


def test_unreachable_stripe_ends_the_run_after_one_round_without_an_answer(env: Env) -> None:
    _seed(env.store)
    env.fake.state.faults.inject("drop_before", times=10_000, path="/v1/billing/meter_events")
    first = env.sync()
    assert first.unknown == 12 and not first.ok
    assert first.to_dict()["ok"] is False and "stay pending" in first.to_dict()["error"]
    tries = _meter_posts(env.fake)
    assert tries == 12 * 2  # one round: each row its two attempts
    again = env.sync()  # every row is now a re-send; none gets an answer: one round only
    assert again.unknown == 12 and not again.ok
    assert _meter_posts(env.fake) - tries == 12 * 2  # was 3 rounds (72)
    env.fake.state.faults.clear()
    settled = env.sync()
    assert settled.ok and settled.resent == 12 and settled.to_dict()["error"] is None


def test_cli_sync_exits_1_in_one_line_when_stripe_refuses_events(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(env.store)
    env.fake.state.clock.advance(40 * 86400)  # every timestamp is now too old for Stripe: 400
    result = env.cli("sync", "--api", "v1", monkeypatch=monkeypatch)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: stripe sync incomplete: 12 events refused by Stripe"), line
    env.fake.state.clock.set(hours_ago(0) + timedelta(minutes=30))
    dry = env.cli("sync", "--dry-run", monkeypatch=monkeypatch)
    assert dry.exit_code == 0, dry.output  # a dry run sends nothing and fails nothing


def test_cli_sync_exits_0_when_everything_went_out(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(env.store)
    result = env.cli("sync", "--api", "v2", "--format", "json", monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["sent"] == 12 and data["error"] is None
    assert len(env.fake.state.meter_events) == 12 and Ledger(env.store).slots()


def test_serve_scheduler_warns_and_keeps_running_when_a_run_is_incomplete(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    from meterline.aggregator.stripe import StripeEnv, SyncLoop

    _seed(env.store)
    env.fake.state.clock.advance(40 * 86400)  # Stripe refuses every event
    config = env.config.model_copy(update={"sync_interval": timedelta(seconds=10)})
    stripe_env = StripeEnv(api_key=env.fake.api_key, api_base=env.fake.base_addresses["api"],
                           meter_events_base=env.fake.base_addresses["meter_events"])  # fmt: skip
    loop = SyncLoop(env.store, config, env.pricing, env=stripe_env)
    loop.interval = 0.1
    with caplog.at_level("WARNING", logger="meterline.aggregator.stripe._service"):
        loop.start()
        try:
            for _ in range(300):
                if loop.runs >= 2:
                    break
                loop._stop.wait(0.1)
        finally:
            assert loop.stop()
    assert loop.runs >= 2 and loop.last is not None
    assert loop.last_error is None  # not a crash: a finished run that says what is pending
    # later runs find the refused windows blocked (listed for a person, not re-sent)
    assert {r["reason"] for r in loop.last.reported} == {"blocked: settle by hand"}
    warned = [r.getMessage() for r in caplog.records if "stripe sync incomplete" in r.getMessage()]
    assert warned and "refused by Stripe" in warned[0]


# --- 2. a customer Stripe does not have: visible, nothing lost ---------------------------------


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_usage_of_a_customer_stripe_lacks_stays_pending_until_the_mapping_is_fixed(
    env: Env, api: str
) -> None:
    from meterline.aggregator.stripe import set_customer

    _seed(env.store)
    set_customer(env.store, "globex", "cus_typo")  # well-formed, unknown to Stripe
    first = env.sync(api=api)
    assert first.sent == 6 and not first.ok and first.missing_customers == ["cus_typo"]
    missing = [r for r in first.reported if "Stripe has no customer cus_typo" in str(r["reason"])]
    assert {r["consumer"] for r in missing} == {"globex"} and len(missing) == 6
    assert env.fake.state.error_reports == []  # nothing was sent to be dropped
    assert not [s for s in Ledger(env.store).slots() if s[0] == "globex"]  # not "accepted"
    assert "Stripe has no customer cus_typo" in (first.problem() or "")
    again = env.sync(api=api)  # checked again: still missing, still pending, still said
    assert again.sent == 0 and again.missing_customers == ["cus_typo"] and len(again.reported) == 6
    set_customer(env.store, "globex", "cus_globex")
    fixed = env.sync(api=api)
    assert fixed.ok and fixed.sent == 6
    assert env.fake.state.totals()[("cus_globex", "llm_input_tokens")] == 102 + 103


def test_a_customer_created_in_stripe_later_is_sent_to_at_the_next_run(env: Env) -> None:
    from meterline.aggregator.stripe import set_customer

    _seed(env.store, ("acme",))
    set_customer(env.store, "acme", "cus_later")
    assert env.sync().missing_customers == ["cus_later"]
    env.fake.state.add_customer("cus_later")
    assert env.sync().sent == 6 and env.fake.state.error_reports == []


def test_a_deleted_customer_counts_as_missing(env: Env) -> None:
    _seed(env.store, ("acme",))
    with env.fake.state.lock:
        env.fake.state.customers["cus_acme"]["deleted"] = True
    summary = env.sync()
    assert summary.sent == 0 and summary.missing_customers == ["cus_acme"]


def test_setup_checks_every_mapped_customer_and_exits_1_for_a_missing_one(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meterline.aggregator.stripe import set_customer

    set_customer(env.store, "initech", "cus_nobody")  # an API assignment is checked too
    result = env.cli("setup", monkeypatch=monkeypatch)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    rows = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines()
            if line.startswith("cus_")}  # fmt: skip
    assert rows == {"cus_acme": "found", "cus_globex": "found", "cus_nobody": "missing"}
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: stripe setup incomplete: Stripe has no customer cus_nobody")
    set_customer(env.store, "initech", None)
    assert env.cli("setup", monkeypatch=monkeypatch).exit_code == 0


# --- 4. PUT /v1/consumers/{c} --------------------------------------------------------------------


def _api(env: Env, monkeypatch: pytest.MonkeyPatch, *, key: bool = True) -> Any:
    from fastapi.testclient import TestClient

    from meterline.aggregator.app import create_app
    from meterline.settings import ServerSettings

    if key:
        monkeypatch.setenv("STRIPE_API_KEY", env.fake.api_key)
        monkeypatch.setenv("METERLINE_STRIPE_API_BASE", env.fake.base_addresses["api"])
    else:
        monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    client = TestClient(create_app(ServerSettings(config=env.path, admin_key="k"), env.store))
    client.headers["authorization"] = "Bearer k"
    return client


def test_put_consumer_refuses_long_ids_and_customers_stripe_lacks(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(env.store)
    client = _api(env, monkeypatch)
    for bad in ("cus_" + "a" * 252, "cus_" + "x" * 300):
        got = client.put("/v1/consumers/acme", json={"stripe_customer_id": bad})
        assert got.status_code == 422 and "at most 255" in got.json()["detail"], got.text
    missing = client.put("/v1/consumers/acme", json={"stripe_customer_id": "cus_typo"})
    assert missing.status_code == 422
    assert missing.json()["detail"].startswith("Stripe has no customer cus_typo")
    assert client.get("/v1/consumers/acme").json()["stripe_customer_id"] == "cus_acme"  # kept
    fine = client.put("/v1/consumers/acme", json={"stripe_customer_id": "cus_globex"})
    assert fine.status_code == 200 and fine.json()["warnings"] == []
    assert fine.json()["source"] == "api"
    longest = "cus_" + "a" * 251  # 255 characters: Stripe's limit, accepted as a form
    env.fake.state.add_customer(longest)
    assert client.put("/v1/consumers/acme", json={"stripe_customer_id": longest}).status_code == 200


def test_put_consumer_never_seen_is_accepted_with_a_warning(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _api(env, monkeypatch)
    got = client.put("/v1/consumers/nobody here", json={"stripe_customer_id": "cus_initech"})
    assert got.status_code == 200, got.text
    [warning] = got.json()["warnings"]
    assert "'nobody here' has no usage and no API key yet" in warning
    assert client.get("/v1/consumers/nobody here").json()["stripe_customer_id"] == "cus_initech"


def test_put_consumer_without_a_stripe_key_on_the_server_says_it_did_not_check(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(env.store)
    client = _api(env, monkeypatch, key=False)
    got = client.put("/v1/consumers/acme", json={"stripe_customer_id": "cus_typo"})
    assert got.status_code == 200
    assert got.json()["warnings"] == [
        "cus_typo not checked in Stripe: STRIPE_API_KEY is not set on the server (the sync "
        "checks it before sending)"
    ]


# --- 3. reconcile: consumers deliberately not billed through Stripe ------------------------------


def test_reconcile_lists_consumers_without_a_customer_and_keeps_them_out_of_the_exit_code(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(env.store, ("acme", "globex", "initech"))  # initech: no customer, on purpose
    assert env.sync().sent == 12
    month = hours_ago(3).strftime("%Y-%m")
    result = env.cli("reconcile", "--period", month, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    assert "Not billed through Stripe (no Stripe customer; not checked):" in result.stdout
    data = json.loads(env.cli("reconcile", "--period", month, "--format", "json",
                              monkeypatch=monkeypatch).stdout)  # fmt: skip
    assert data["ok"] is True
    assert {r["consumer"] for r in data["not_billed"]} == {"initech"}
    assert {r["consumer"] for r in data["rows"]} == {"acme", "globex"}
    assert all(r["billed"] for r in data["rows"])
    # a consumer WITH a customer whose totals differ still fails
    insert_calls(env.store, [Call(at=hours_ago(3) + timedelta(minutes=40), input=5, output=5)])
    late = env.cli("reconcile", "--period", month, monkeypatch=monkeypatch)
    assert late.exit_code == 1
    assert (
        late.stderr.strip().splitlines()[-1] == f"error: Stripe and the invoices of {month} differ"
    )


def test_reconcile_keeps_a_consumer_whose_customer_was_removed_after_a_send(env: Env) -> None:
    from meterline.aggregator.stripe import reconcile_report, set_customer

    _seed(env.store, ("acme",))
    set_customer(env.store, "globex", None)
    set_customer(env.store, "acme", "cus_acme")
    env.sync()
    env.config = env.config.model_copy(update={"customers": {}})  # acme unmapped now
    set_customer(env.store, "acme", None)
    insert_calls(env.store, [Call(at=hours_ago(3) + timedelta(minutes=40), input=5, output=5)])
    report = reconcile_report(env.store, env.pricing, env.config, hours_ago(3).strftime("%Y-%m"))
    assert report["not_billed"] == [] and not report["ok"]  # Stripe holds some of its usage


def test_reconcile_check_stripe_finds_events_the_ledger_accepted_but_stripe_dropped(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(env.store)
    month = hours_ago(3).strftime("%Y-%m")
    with env.fake.state.lock:  # a meter deactivated in Stripe: its events are dropped later
        [cost] = [m for m in env.fake.state.meters.values() if m["event_name"] == "llm_cost"]
        cost["status"] = "inactive"
    assert env.sync().sent == 12  # Stripe answered 200 to every one
    assert {r.code for r in env.fake.state.error_reports} == {"no_meter"}
    plain = env.cli("reconcile", "--period", month, monkeypatch=monkeypatch)
    assert plain.exit_code == 0  # the ledger alone cannot see it
    checked = env.cli("reconcile", "--period", month, "--check-stripe", "--format", "json",
                      monkeypatch=monkeypatch)  # fmt: skip
    assert checked.exit_code == 1, checked.output
    rows = json.loads(checked.stdout)["rows"]
    bad = {(r["consumer"], r["meter"]) for r in rows if not r["ok"]}
    assert bad == {("acme", "llm_cost"), ("globex", "llm_cost")}
    assert all(r["in_stripe"] == "0" for r in rows if r["meter"] == "llm_cost")
    tokens = [r for r in rows if r["meter"] != "llm_cost"]
    assert tokens and all(r["in_stripe"] == r["accepted"] and r["ok"] for r in tokens)
    with env.fake.state.lock:
        cost["status"] = "active"
    table = env.cli("reconcile", "--period", month, "--check-stripe", monkeypatch=monkeypatch)
    assert "in_stripe" in table.stdout.splitlines()[0]


def test_event_summaries_of_the_standin_follow_stripes_parameters(env: Env) -> None:
    import stripe

    _seed(env.store, ("acme",))
    env.sync()
    client = stripe.StripeClient(env.fake.api_key, base_addresses=env.fake.base_addresses)
    [meter] = [m for m in env.fake.state.meters.values() if m["event_name"] == "llm_input_tokens"]
    start, end = int(hours_ago(5).timestamp()), int(hours_ago(0).timestamp())
    params = {"customer": "cus_acme", "start_time": start, "end_time": end}
    [whole] = client.v1.billing.meters.event_summaries.list(meter["id"], params).data  # type: ignore[arg-type]
    assert whole.aggregated_value == 102 + 103 and whole.start_time == start
    hourly = client.v1.billing.meters.event_summaries.list(
        meter["id"],
        {**params, "value_grouping_window": "hour"},  # type: ignore[arg-type]
    ).data
    assert sorted(s.aggregated_value for s in hourly) == [102, 103]
    with pytest.raises(stripe.InvalidRequestError, match="aligned"):
        client.v1.billing.meters.event_summaries.list(
            meter["id"],
            {**params, "start_time": start + 30},  # type: ignore[arg-type]
        )
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.billing.meters.event_summaries.list(meter["id"], {**params, "customer": "cus_x"})  # type: ignore[arg-type]
    assert missing.value.code == "resource_missing"


def test_a_customer_check_without_an_answer_does_not_hold_the_usage_back(env: Env) -> None:
    _seed(env.store, ("acme",))
    env.fake.state.faults.inject("drop_before", times=50, path="/v1/customers/")
    summary = env.sync(client=client_for(env.fake))  # 8 attempts per request
    assert summary.ok and summary.sent == 6 and summary.missing_customers == []
    checks = [r for r in env.fake.state.requests if r[1].startswith("/v1/customers/")]
    assert len(checks) == 3  # a best-effort read: three tries, not the sends' eight


# --- as a user: what R10 did not exercise ---------------------------------------------------------

FILTERED = """
currency: USD
models:
  - provider: openai
    model: gpt-4o
    per_million_tokens: {input: "2.50", cache_read: "1.25", output: "10.00"}
  - provider: anthropic
    model: claude-sonnet-4
    per_million_tokens: {input: "3.00", output: "15.00"}
plans:
  consumers:
    acme: {markup_percent: "20"}
stripe:
  customers: {acme: cus_acme, globex: cus_globex}
  meters:
    - event_name: llm_input_tokens
      value: tokens
      providers: openai
      token_types: [input, cache_read]
    - event_name: llm_output_tokens
      value: tokens
      models: [claude-sonnet-4]
      token_types: [output]
    - event_name: llm_cost
      value: cost
      unit: "0.000001"
      features: chat
"""


def test_per_meter_filters_send_only_what_each_meter_counts(
    store: Store, tmp_path: Path, fake: StandinServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from decimal import Decimal

    from meterline.aggregator.stripe import reconcile_report

    env = Env(store, tmp_path, fake)
    env.path.write_text(FILTERED, encoding="utf-8")
    env.config = load_stripe_config(env.path)
    env.pricing = load_store_pricing(store, env.path)
    at = hours_ago(3) + timedelta(minutes=5)
    insert_calls(store, [
        Call(at=at, consumer="acme", input=2000, cache_read=400, output=100, feature="chat"),
        Call(at=at, consumer="acme", input=1000, output=50, feature="search"),
        Call(at=at, consumer="acme", provider="anthropic", model="claude-sonnet-4", input=10,
             output=7, feature="chat"),
        Call(at=at, consumer="globex", provider="anthropic", model="claude-sonnet-4",
             input=3000, output=300),
    ])  # fmt: skip
    assert env.sync().ok
    totals = fake.state.totals()
    assert totals[("cus_acme", "llm_input_tokens")] == 3000  # openai only (no claude input)
    assert totals[("cus_acme", "llm_output_tokens")] == 7  # claude-sonnet-4 only
    assert totals[("cus_globex", "llm_output_tokens")] == 300
    assert ("cus_globex", "llm_input_tokens") not in totals  # no openai usage
    assert ("cus_globex", "llm_cost") not in totals  # no feature "chat"
    # chat cost of acme: (1600×2.50 + 400×1.25 + 100×10 + 10×3 + 7×15) / 1M × 1.2
    chat = (Decimal(1600 * 250 + 400 * 125 + 100 * 1000 + 10 * 300 + 7 * 1500) / 10**8) * 120 / 100
    assert totals[("cus_acme", "llm_cost")] == int(chat / Decimal("0.000001"))
    report = reconcile_report(store, env.pricing, env.config, hours_ago(3).strftime("%Y-%m"))
    assert report["ok"], report
    by = {(r["consumer"], r["meter"]): r for r in report["rows"]}
    assert by[("acme", "llm_cost")]["source"] == "windows"  # an invoice cannot split features
    assert by[("acme", "llm_cost")]["expected"] == "0.006762"  # plain, not 0.00676200…0
    assert by[("acme", "llm_input_tokens")]["source"] == "invoice"


def test_an_expired_window_repriced_lower_is_reported_as_a_credit(env: Env) -> None:
    insert_calls(env.store, [Call(at=hours_ago(36 * 24), input=1000, output=100)])
    first = env.sync()
    [expired] = [r for r in first.reported if r["kind"] == "expired" and r["meter"] == "llm_cost"]
    assert "bill" in str(expired["reason"])
    cheaper = env.path.read_text().replace('output: "10.00"', 'output: "1.00"')
    env.path.write_text(cheaper, encoding="utf-8")
    env.pricing = load_store_pricing(env.store, env.path)
    second = env.sync()
    [credit] = [r for r in second.reported if r["kind"] == "expired" and r["meter"] == "llm_cost"]
    assert int(credit["value"]) < 0  # type: ignore[call-overload]
    assert str(credit["reason"]).endswith(f"credit {-int(credit['value'])} by hand")  # type: ignore[call-overload]
    assert env.fake.state.meter_events == []


def test_sync_through_a_running_server_exits_1_and_status_says_why(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.aggregator.test_invoices_cli import serve

    _seed(env.store)
    env.fake.state.clock.advance(40 * 86400)  # Stripe refuses every event
    monkeypatch.setenv("STRIPE_API_KEY", env.fake.api_key)
    monkeypatch.setenv("METERLINE_STRIPE_API_BASE", env.fake.base_addresses["api"])
    with serve(env.store, env.path, monkeypatch):
        result = runner.invoke(app, ["stripe", "sync", "--api", "v1"])
        assert result.exit_code == 1, result.output
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .startswith("error: stripe sync incomplete: 12 events refused by Stripe")
        )
        shown = runner.invoke(app, ["stripe", "status"])
        assert shown.exit_code == 0, shown.output
        assert "last run incomplete: stripe sync incomplete: 12 events refused" in shown.stdout


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_progress_counts_every_event_once_up_to_the_total(env: Env, api: str) -> None:
    insert_calls(env.store, [Call(at=hours_ago(h), consumer=c, input=5, output=5)
                             for h in range(2, 22) for c in ("acme", "globex")])  # fmt: skip
    seen: list[tuple[int, int]] = []
    summary = env.sync(api=api, progress=lambda done, total: seen.append((done, total)))
    assert summary.sent == 120
    assert [d for d, _ in seen] == list(range(1, 121)) and {t for _, t in seen} == {120}


def test_late_and_negative_corrections_through_the_cli(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's evening: v2 sync, late usage (a correction), a price cut (cancellations and
    re-sends, v1), then Stripe's meters agree with the invoices."""
    _seed(env.store)
    month = hours_ago(3).strftime("%Y-%m")

    def sync(*args: str) -> dict[str, Any]:
        result = env.cli("sync", *args, "--format", "json", monkeypatch=monkeypatch)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    assert sync("--api", "v2")["sent"] == 12
    insert_calls(env.store, [Call(at=hours_ago(3) + timedelta(minutes=50), input=40, output=4,
                                  response_id="late-1")])  # fmt: skip
    late = sync("--api", "v2")
    assert (late["sent"], late["corrections"], late["cancels"]) == (0, 3, 0)
    env.path.write_text(env.path.read_text().replace('output: "10.00"', 'output: "1.00"'))
    cut = sync("--api", "v2")  # cancellations go over v1 whatever --api says
    assert cut["cancels"] > 0 and cut["ok"]
    assert {e.api for e in env.fake.state.meter_events if not e.canceled} >= {"v1"}
    checked = env.cli("reconcile", "--period", month, "--check-stripe", monkeypatch=monkeypatch)
    assert checked.exit_code == 0, checked.output
    assert sync()["sent"] == 0  # nothing left
