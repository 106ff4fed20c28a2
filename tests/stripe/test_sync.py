"""``run_sync`` end to end in one process: real spans → rated table → the official SDK →
the stand-in. Each test states the totals Stripe must hold and checks them there."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from meterline.aggregator.invoices import between, compute_invoices, load_store_pricing
from meterline.aggregator.stripe import (
    Ledger,
    load_stripe_config,
    reconcile,
    run_sync,
    set_customer,
    status,
)
from meterline.aggregator.tenancy import Scope
from meterline.store import Store
from meterline.stripe_standin import StandinServer
from tests.aggregator._calls import Call, insert_calls
from tests.stripe._support import (
    PRICING_YAML,
    client_for,
    expected_from_invoices,
    hours_ago,
    standin,
)
from tests.stripe._support import write_config as write_stripe_config

CUSTOMERS = {"acme": "cus_acme", "globex": "cus_globex"}
CHEAPER = PRICING_YAML.replace('output: "10.00"', 'output: "1.00"')


@pytest.fixture
def fake() -> Iterator[StandinServer]:
    server = standin()
    try:
        yield server
    finally:
        server.stop()


class Env:
    def __init__(self, store: Store, tmp_path: Path, fake: StandinServer, **config: str) -> None:
        self.store, self.fake, self.tmp_path = store, fake, tmp_path
        self.configure(**config)
        self.client = client_for(fake)

    def configure(self, **config: str) -> None:
        path = write_stripe_config(self.tmp_path, **config)
        self.config = load_stripe_config(path)
        self.pricing = load_store_pricing(self.store, path)

    def sync(self, **kw):  # type: ignore[no-untyped-def]
        kw.setdefault("api", "v1")
        return run_sync(self.store, self.config, pricing=self.pricing, client=self.client, **kw)

    def expected(self) -> dict[tuple[str, str], Decimal]:
        """What the invoices of the closed windows bill, per customer and meter."""
        end = hours_ago(1)
        invoices = compute_invoices(
            self.store, self.pricing, between(end - timedelta(days=40), end), scope=Scope.ALL
        )
        return expected_from_invoices(invoices.values(), CUSTOMERS, self.pricing)

    def totals(self) -> dict[tuple[str, str], int]:
        return self.fake.state.totals()

    def assert_exact(self) -> None:
        """Token meters exactly; the cost meter within its rounding (one unit per window)."""
        totals, expected = self.totals(), self.expected()
        tokens = {k: v for k, v in expected.items() if k[1] not in ("llm_cost", "rounding")}
        assert {k: v for k, v in totals.items() if k[1] != "llm_cost"} == tokens
        for key, money in expected.items():
            if key[1] == "llm_cost":
                windows = len({e.timestamp for e in self.fake.state.meter_events
                               if e.payload["stripe_customer_id"] == key[0]})  # fmt: skip
                sent = Decimal(totals.get(key, 0)) * Decimal("0.000001")
                rounding = expected[(key[0], "rounding")]
                assert abs(sent - money) <= windows * Decimal("0.0000005") + rounding


@pytest.fixture
def env(store: Store, tmp_path: Path, fake: StandinServer) -> Env:
    return Env(store, tmp_path, fake)


def _calls(at: datetime, consumer: str = "acme", n: int = 3, **kw: object) -> list[Call]:
    return [
        Call(
            at=at + timedelta(minutes=5 + i),
            consumer=consumer,
            input=1000 + i,
            output=37 * i + 1,
            cache_read=11 * i,
            **kw,
        )
        for i in range(n)
    ]  # type: ignore[arg-type]


def _seed(store: Store) -> None:
    insert_calls(store, [*_calls(hours_ago(3)), *_calls(hours_ago(2)),
                         *_calls(hours_ago(2), "globex", model="claude-sonnet-4",
                                 provider="anthropic"),
                         *_calls(hours_ago(1), n=2)])  # the open window  # fmt: skip


def test_closed_windows_sent_once_and_rerun_sends_nothing(env: Env) -> None:
    _seed(env.store)
    summary = env.sync()
    assert summary.sent == 9 and summary.corrections == 0  # 3 meters × (2 acme + 1 globex)
    env.assert_exact()
    stamps = {e.timestamp for e in env.fake.state.meter_events}
    assert stamps == {int(hours_ago(3).timestamp()), int(hours_ago(2).timestamp())}
    before = len(env.fake.state.meter_events)
    again = env.sync()
    assert (again.sent, again.corrections, again.cancels) == (0, 0, 0)
    assert len(env.fake.state.meter_events) == before
    assert all(r["ok"] for r in _reconcile(env))


def _reconcile(env: Env) -> list[dict[str, object]]:
    month = hours_ago(3).strftime("%Y-%m")
    return [r.to_dict() for r in reconcile(env.store, env.pricing, env.config, month)]


def test_cost_meter_rounds_half_up_per_window(env: Env) -> None:
    # 1 input token of gpt-4o = 0.0000025 USD; acme's markup 20 % → 0.000003 → 3 units;
    # globex (no markup): 0.0000025 / 0.000001 = 2.5 → 3 (half-up, not banker's 2)
    insert_calls(env.store, [Call(at=hours_ago(3), consumer="acme", input=1),
                             Call(at=hours_ago(3), consumer="globex", input=1)])  # fmt: skip
    env.sync()
    totals = env.totals()
    assert totals[("cus_acme", "llm_cost")] == 3
    assert totals[("cus_globex", "llm_cost")] == 3
    assert Decimal("2.5").quantize(Decimal(1), rounding=ROUND_HALF_UP) == 3


def test_v2_streams(env: Env) -> None:
    _seed(env.store)
    summary = env.sync(api="v2")
    assert summary.api == "v2" and summary.sent == 9
    assert {e.api for e in env.fake.state.meter_events} == {"v2"}
    env.assert_exact()
    assert env.sync(api="v2").sent == 0


def test_auto_picks_v2_above_a_few_hundred(env: Env) -> None:
    insert_calls(env.store, [Call(at=hours_ago(h), consumer=c, input=10, output=1)
                             for h in range(2, 60) for c in ("acme", "globex")])  # fmt: skip
    summary = env.sync(api="auto")
    assert summary.api == "v2" and summary.sent == 58 * 2 * 3
    env.assert_exact()


def test_late_usage_goes_out_as_one_correction(env: Env) -> None:
    _seed(env.store)
    env.sync()
    insert_calls(env.store, [Call(at=hours_ago(3) + timedelta(minutes=50), input=500, output=5)])
    summary = env.sync()
    assert (summary.sent, summary.corrections) == (0, 3)  # one per meter of that window
    corrections = [e for e in env.fake.state.meter_events if e.identifier.endswith("-2")]
    by_meter = {e.event_name: int(e.payload["value"]) for e in corrections}
    assert by_meter["llm_input_tokens"] == 500 and by_meter["llm_output_tokens"] == 5
    env.assert_exact()
    assert env.sync().corrections == 0


def test_negative_delta_within_24h_cancels_and_resends(env: Env, tmp_path: Path) -> None:
    _seed(env.store)
    env.sync()
    env.configure(pricing=CHEAPER)  # the price fell: re-rated windows are worth less
    summary = env.sync()
    assert summary.cancels == 2  # acme's two cost events
    cancelled = {a.identifier for a in env.fake.state.adjustments}
    assert len(cancelled) == 2
    env.assert_exact()
    assert env.sync().cancels == 0


def test_negative_delta_after_24h_is_reported_for_a_credit(env: Env, tmp_path: Path) -> None:
    _seed(env.store)
    env.sync()
    env.configure(pricing=CHEAPER)
    env.fake.state.clock.advance(25 * 3600)
    summary = env.sync(now=datetime.now(UTC) + timedelta(hours=25))
    assert summary.cancels == 0 and not env.fake.state.adjustments
    credits = [r for r in summary.reported if r.get("kind") == "credit"]
    assert len(credits) == 2 and all(int(r["value"]) < 0 for r in credits)  # type: ignore[call-overload]
    again = env.sync(now=datetime.now(UTC) + timedelta(hours=25))
    assert not [r for r in again.reported if r.get("kind") == "credit"]  # reported once


def test_dry_run_sends_and_writes_nothing(env: Env) -> None:
    _seed(env.store)
    summary = env.sync(dry_run=True)
    assert len(summary.would_send) == 9 and summary.sent == 0
    assert env.fake.state.meter_events == [] and env.fake.state.requests == []
    assert Ledger(env.store).slots() == {}
    assert env.sync().sent == 9


def test_unpriced_usage_is_held_by_default(env: Env, tmp_path: Path) -> None:
    insert_calls(env.store, [Call(at=hours_ago(3), model="mystery-1", input=700, output=7),
                             Call(at=hours_ago(3), input=100, output=1)])  # fmt: skip
    summary = env.sync()
    assert env.totals()[("cus_acme", "llm_input_tokens")] == 100
    held = {h["meter"]: h["tokens"] for h in summary.held}
    assert held == {"llm_input_tokens": 700, "llm_output_tokens": 7, "llm_cost": 707}


def test_unpriced_send_counts_tokens_but_never_money(store: Store, tmp_path: Path,
                                                     fake: StandinServer) -> None:  # fmt: skip
    env = Env(store, tmp_path, fake, unpriced="send")
    insert_calls(store, [Call(at=hours_ago(3), model="mystery-1", input=700, output=7),
                         Call(at=hours_ago(3), input=100, output=1)])  # fmt: skip
    summary = env.sync()
    totals = env.totals()
    assert totals[("cus_acme", "llm_input_tokens")] == 800
    assert totals[("cus_acme", "llm_output_tokens")] == 8
    assert [h["meter"] for h in summary.held] == ["llm_cost"]


def test_consumer_without_customer_is_reported_then_sent_once_mapped(env: Env) -> None:
    insert_calls(env.store, _calls(hours_ago(3), "initech"))
    summary = env.sync()
    assert env.fake.state.meter_events == []
    assert {r["reason"] for r in summary.reported} == {"no Stripe customer"}
    assert {r["consumer"] for r in summary.reported} == {"initech"}
    set_customer(env.store, "initech", "cus_initech")
    assert env.sync().sent == 3
    assert env.totals()[("cus_initech", "llm_input_tokens")] == 3003  # input includes cache


def test_windows_older_than_35_days_are_reported_not_sent(env: Env) -> None:
    insert_calls(env.store, [Call(at=hours_ago(36 * 24), input=10, output=1),
                             Call(at=hours_ago(3), input=20, output=2)])  # fmt: skip
    summary = env.sync()
    assert summary.sent == 3
    assert {e.timestamp for e in env.fake.state.meter_events} == {int(hours_ago(3).timestamp())}
    expired = [r for r in summary.reported if r.get("kind") == "expired"]
    assert {r["meter"] for r in expired} == {"llm_input_tokens", "llm_output_tokens", "llm_cost"}
    assert not [r for r in env.sync().reported if r.get("kind") == "expired"]  # once


def test_rate_limit_storm_and_server_errors(env: Env) -> None:
    _seed(env.store)
    faults = env.fake.state.faults
    faults.inject("rate_limit", times=6, path="/v1/billing/meter_events", retry_after=0)
    faults.inject("server_error", times=2, path="/v1/billing/meter_events")
    faults.inject("server_error_after", times=2, path="/v1/billing/meter_events")
    faults.inject("drop_after", times=2, path="/v1/billing/meter_events")
    faults.inject("lock_timeout", times=2, path="/v1/billing/meter_events")
    summary = env.sync()
    assert summary.sent == 9 and summary.unknown == 0 and summary.rejected == 0
    assert not faults.pending()
    env.assert_exact()  # applied-then-500 and dropped answers were not counted twice
    # at least one applied event was sent again and refused as a duplicate identifier; how
    # many depends on which requests the faults hit (an idempotency-key replay answers the
    # others with the stored result, and the four send queues run in parallel)
    assert len(env.fake.state.duplicates) >= 1


def test_overlapping_calls_per_customer_and_meter_never_happen(
    store: Store, tmp_path: Path
) -> None:
    fake = standin(meter_event_latency=0.01)
    try:
        env = Env(store, tmp_path, fake)
        insert_calls(store, [Call(at=hours_ago(h), consumer=c, input=5, output=5)
                             for h in range(2, 12) for c in ("acme", "globex")])  # fmt: skip
        summary = env.sync()
        assert summary.sent == 60 and summary.throttled == 0
        assert [r for r in fake.state.requests if r[2] == 429] == []
    finally:
        fake.stop()


def test_unknown_outcome_resent_within_24h_else_reported(env: Env) -> None:
    _seed(env.store)
    env.fake.state.faults.inject("drop_after", times=50, path="/v1/billing/meter_events")
    first = env.sync()
    assert first.unknown > 0  # retries ran out with no answer: rows stay unresolved
    unresolved = [r for rs in Ledger(env.store).slots().values() for r in rs if r.unresolved]
    assert unresolved
    env.fake.state.faults.clear()
    second = env.sync()
    assert second.resent == len(unresolved)
    env.assert_exact()
    # a later unknown outcome, found after Stripe forgot the identifier: reported, not sent
    insert_calls(env.store, [Call(at=hours_ago(3) + timedelta(minutes=55), input=9, output=9)])
    env.fake.state.faults.inject("drop_before", times=50, path="/v1/billing/meter_events")
    env.sync()
    env.fake.state.faults.clear()
    env.fake.state.clock.advance(25 * 3600)
    late = env.sync(now=datetime.now(UTC) + timedelta(hours=25))
    assert late.resent == 0 and late.corrections == 0
    assert any("outcome unknown" in str(r.get("reason")) for r in late.reported)
    assert status(env.store, env.config)["reported"]


def test_status_reports_pending_lag_and_last_run(env: Env) -> None:
    _seed(env.store)
    before = status(env.store, env.config, pricing=env.pricing)
    assert before["pending_events"] == 9 and before["last_run"] is None
    assert before["lag_seconds"] > 0
    env.sync()
    after = status(env.store, env.config, pricing=env.pricing)
    assert after["pending_events"] == 0 and after["lag_seconds"] == 0
    assert after["last_run"]["sent"] == 9


def test_reconcile_flags_a_difference(env: Env) -> None:
    _seed(env.store)
    env.sync()
    assert all(r["ok"] for r in _reconcile(env))
    insert_calls(env.store, [Call(at=hours_ago(3) + timedelta(minutes=40), input=1, output=1)])
    rows = _reconcile(env)  # late usage not synced yet
    bad = {r["meter"] for r in rows if not r["ok"]}
    assert {"llm_input_tokens", "llm_output_tokens"} <= bad


def test_day_windows(store: Store, tmp_path: Path, fake: StandinServer) -> None:
    env = Env(store, tmp_path, fake, window="day")
    day = hours_ago(0).replace(hour=0) - timedelta(days=1)
    insert_calls(
        store, [Call(at=day + timedelta(hours=h), input=10, output=1) for h in (1, 13, 23)]
    )
    summary = env.sync()
    assert summary.sent == 3
    assert {e.timestamp for e in fake.state.meter_events} == {int(day.timestamp())}
    assert env.totals()[("cus_acme", "llm_input_tokens")] == 30


def test_sync_loop_of_serve_runs_and_stops_cleanly(env: Env) -> None:
    from meterline.aggregator.stripe import StripeEnv, SyncLoop

    _seed(env.store)
    config = env.config.model_copy(update={"sync_interval": timedelta(seconds=10)})
    stripe_env = StripeEnv(api_key=env.fake.api_key, api_base=env.fake.base_addresses["api"],
                           meter_events_base=env.fake.base_addresses["meter_events"])  # fmt: skip
    loop = SyncLoop(env.store, config, lambda: env.pricing, env=stripe_env)
    loop.interval = 0.2
    loop.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=120)
        while loop.last is None and datetime.now(UTC) < deadline:
            loop._stop.wait(0.1)
    finally:
        loop.stop()
    assert not loop._thread.is_alive()
    assert loop.last is not None and loop.last.sent == 9 and loop.last_error is None
    env.assert_exact()


def test_api_routes_are_admin_only(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from meterline.aggregator.app import create_app
    from meterline.aggregator.keys import create_key
    from meterline.settings import ServerSettings

    _seed(env.store)
    monkeypatch.setenv("STRIPE_API_KEY", env.fake.api_key)
    monkeypatch.setenv("METERLINE_STRIPE_API_BASE", env.fake.base_addresses["api"])
    monkeypatch.setenv(
        "METERLINE_STRIPE_METER_EVENTS_BASE", env.fake.base_addresses["meter_events"]
    )
    settings = ServerSettings(config=tmp_path / "meterline.yaml", admin_key="k")
    client = TestClient(create_app(settings, env.store))
    _, secret = create_key(env.store, consumer="acme", scopes=("read",))
    as_consumer = {"authorization": f"Bearer {secret}"}
    assert client.get("/v1/stripe/status", headers=as_consumer).status_code == 403
    assert client.post("/v1/stripe/sync", headers=as_consumer).status_code == 403
    admin = {"authorization": "Bearer k"}
    dry = client.post("/v1/stripe/sync?dry_run=true&api=v1", headers=admin)
    assert dry.status_code == 200, dry.text
    assert len(dry.json()["would_send"]) == 9 and env.fake.state.meter_events == []
    done = client.post("/v1/stripe/sync?api=v1", headers=admin).json()
    assert done["sent"] == 9
    got = client.get("/v1/stripe/status", headers=admin).json()
    assert got["pending_events"] == 0 and got["last_run"]["sent"] == 9
    month = hours_ago(3).strftime("%Y-%m")
    assert client.get(f"/v1/stripe/reconcile?period={month}", headers=admin).json()["ok"]


def test_stripe_unreachable_counts_each_row_unknown_once_then_a_rerun_settles_them(
    env: Env,
) -> None:
    """The run's rounds re-try rows of unknown outcome; the summary counts rows, not tries."""
    import socket

    from meterline.aggregator.stripe import MeterEventsClient, Retrying, StripeEnv

    _seed(env.store)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = MeterEventsClient(
        StripeEnv(api_key=env.fake.api_key, api_base=dead, meter_events_base=dead),
        retrying=Retrying(attempts=2, base=0.01, cap=0.02),
    )
    first = run_sync(env.store, env.config, pricing=env.pricing, client=down, api="v1")
    assert (first.sent, first.unknown, first.throttled) == (0, 9, 0)
    # the rows are now of unknown outcome: this run re-sends them, in up to three rounds
    summary = run_sync(env.store, env.config, pricing=env.pricing, client=down, api="v1")
    assert (summary.sent, summary.resent, summary.unknown, summary.throttled) == (0, 0, 9, 0)
    assert summary.to_dict()["unknown"] == 9 and "_unsettled" not in summary.to_dict()
    again = env.sync()
    assert (again.resent, again.unknown, again.sent) == (9, 0, 0)
    env.assert_exact()
