"""Invoice mode (issue 10 §4): ``push_invoices`` end to end — real spans, a finalised month,
the official SDK, the stand-in. Every check reads what the stand-in holds."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from meterline.aggregator.invoices import finalize, get_invoices, load_store_pricing, month, reprice
from meterline.aggregator.stripe import (
    InvoicesClient,
    Retrying,
    StripeEnv,
    load_stripe_config,
    push_invoices,
    set_customer,
)
from meterline.aggregator.stripe._amounts import split_exact
from meterline.aggregator.stripe._push_invoices import _line_text
from meterline.aggregator.tenancy import Scope
from meterline.cli import app
from meterline.store import Store
from meterline.stripe_standin import StandinConfig, StandinServer
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator.pricing_config import CONFIG_YAML
from tests.aggregator.test_invoices import CALLS

PERIOD = "2026-03"
STRIPE = """
stripe:
  customers: {acme: cus_acme, beta: cus_beta}
"""
INITECH = [Call(utc(2026, 3, 11), consumer="initech", model="gpt-4o", input=400_000)]
CHEAPER = CONFIG_YAML.replace('output: "8.00"}', 'output: "4.00"}', 1)


def client_for(fake: StandinServer, attempts: int = 4) -> InvoicesClient:
    env = StripeEnv(api_key=fake.api_key, api_base=fake.base_addresses["api"])
    return InvoicesClient(env, retrying=Retrying(attempts=attempts, base=0.01, cap=0.05))


@pytest.fixture
def fake() -> Iterator[StandinServer]:
    server = StandinServer(StandinConfig(customers=("cus_acme", "cus_beta", "cus_other")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Env:
    """A store with March 2026 finalised, a configuration file, a client of the stand-in."""

    def __init__(self, store: Store, tmp_path: Path, fake: StandinServer) -> None:
        self.store, self.tmp_path, self.fake = store, tmp_path, fake
        self.client = client_for(fake, attempts=4)
        insert_calls(store, [*CALLS, *INITECH])
        self.configure(CONFIG_YAML)
        finalize(store, self.pricing, PERIOD)

    def configure(self, pricing_yaml: str) -> None:
        self.path = self.tmp_path / "meterline.yaml"
        self.path.write_text(pricing_yaml + STRIPE, encoding="utf-8")
        self.pricing = load_store_pricing(self.store, self.path)
        self.config = load_stripe_config(self.path)

    def push(self, **kw: Any) -> Any:
        return push_invoices(self.store, self.pricing, self.config, PERIOD, client=self.client,
                             **kw)  # fmt: skip

    def views(self) -> dict[str, Any]:
        return get_invoices(self.store, self.pricing, month(PERIOD), scope=Scope.ALL)

    def items(self, customer: str | None = None) -> list[dict[str, Any]]:
        state = self.fake.state
        with state.lock:
            items = sorted(state.invoice_items.values(), key=lambda i: i["_seq"])
        return [i for i in items if customer in (None, i["customer"])]

    def invoices(self, customer: str) -> list[dict[str, Any]]:
        state = self.fake.state
        with state.lock:
            found = [i for i in state.invoices.values() if i["customer"] == customer]
        return sorted(found, key=lambda i: i["created"])


@pytest.fixture
def env(store: Store, tmp_path: Path, fake: StandinServer) -> Env:
    return Env(store, tmp_path, fake)


def cents(amount: str | Decimal) -> int:
    return int(Decimal(amount) * 100)


def stripe_state(fake: StandinServer) -> str:
    """Everything Stripe holds, without the request log and the clock."""
    snap = fake.state.snapshot()
    for key in ("requests", "now"):
        snap.pop(key)
    return json.dumps(snap, sort_keys=True, default=str)


def assert_once(env: Env) -> None:
    keys = Counter(i["metadata"]["meterline_key"] for i in env.items())
    assert keys and max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]


# --- one item per line, the markup, totals to the cent -----------------------------------------


def test_each_line_and_the_markup_become_items_on_a_draft_totalling_the_invoice(env: Env) -> None:
    summary = env.push()
    assert summary.ok and summary.revision == 1
    views = env.views()
    for consumer, customer in (("acme", "cus_acme"), ("beta", "cus_beta")):
        invoice = views[consumer].invoice
        [draft] = env.invoices(customer)
        assert draft["status"] == "draft" and draft["currency"] == "usd"
        assert draft["total"] == cents(invoice.total)  # Stripe's own sum, to the cent
        items = env.items(customer)
        assert all(i["invoice"] == draft["id"] for i in items)
        lines = [line for line in invoice.lines if cents(line.amount)]  # 0.00: not pushed
        expected = [cents(line.amount) for line in lines]
        if invoice.markup:
            expected.append(cents(invoice.markup))
        assert [i["amount"] for i in items] == expected
        for item, line in zip(items, lines, strict=False):
            assert line.model in item["description"] and line.token_type in item["description"]
            assert f"{line.quantity:,} tokens" in item["description"]
            assert item["metadata"]["meterline_revision"] == "1"
            assert item["period"] == {"start": 1772323200, "end": 1775001600}  # March, UTC
    acme = views["acme"].invoice
    # 16 lines, one of 0.00 (skipped, listed in the summary), + the markup
    assert len(env.items("cus_acme")) == len(acme.lines) - 1 + 1
    assert [z["consumer"] for z in summary.zero] == ["acme"]
    [zero_line] = [line for line in acme.lines if cents(line.amount) == 0]
    assert summary.zero[0]["description"] == _line_text(PERIOD, zero_line)
    assert all(i["amount"] != 0 for i in env.items())
    assert "skipped 1 of amount 0" in summary.line()
    assert env.items("cus_acme")[-1]["description"] == "2026-03 plan markup"
    assert [r["ok"] for r in summary.invoices] == [True, True]
    assert_once(env)


def test_a_consumer_without_a_customer_is_reported_and_the_others_pushed(env: Env) -> None:
    summary = env.push()
    assert [r["consumer"] for r in summary.reported] == ["initech"]  # billed, no customer
    assert summary.reported[0]["total"] == "1.00"
    assert {i["customer"] for i in env.items()} == {"cus_acme", "cus_beta"}
    # gamma has only unbilled failed calls: nothing to bill, nothing to report
    assert "gamma" not in {r["consumer"] for r in summary.reported}
    set_customer(env.store, "initech", "cus_other")  # the API's assignment
    again = env.push()
    assert again.reported == [] and {p["customer"] for p in again.pushed} == {"cus_other"}
    assert env.invoices("cus_other")[0]["total"] == 100
    assert_once(env)


def test_the_api_assignment_wins_over_the_file(env: Env) -> None:
    set_customer(env.store, "beta", "cus_other")
    env.push()
    assert env.items("cus_beta") == [] and env.invoices("cus_other")[0]["total"] == 35


# --- re-running changes nothing -----------------------------------------------------------


def test_rerun_changes_nothing_in_stripe(env: Env) -> None:
    first = env.push()
    before, requests = stripe_state(env.fake), len(env.fake.state.requests)
    again = env.push()
    assert again.pushed == [] and again.drafts == 0 and again.ok
    assert again.unchanged == len(first.pushed) == 16 + 2  # a 0.00 line is not an item
    assert len(again.zero) == 1  # skipped again, said again
    assert stripe_state(env.fake) == before
    assert len(env.fake.state.requests) == requests  # not even a read


def test_dry_run_sends_nothing_and_lists_what_a_push_sends(env: Env) -> None:
    dry = env.push(dry_run=True)
    assert env.fake.state.requests == [] and env.items() == []
    _, [(rows,)] = env.store.query("SELECT count() FROM {db}.stripe_invoice_pushes")
    assert rows == 0
    real = env.push()
    listed = [(p["key"], p["minor_units"]) for p in dry.pushed]
    assert listed == [(p["key"], p["minor_units"]) for p in real.pushed]
    assert env.push(dry_run=True).pushed == []


# --- re-issue and adjustments ---------------------------------------------------------------


def test_a_reissued_invoice_is_pushed_as_credits_of_the_old_lines_and_the_new_lines(
    env: Env,
) -> None:
    env.push()
    old = env.views()["acme"].invoice
    old_items = env.items("cus_acme")
    env.configure(CHEAPER)
    result = reprice(env.store, env.pricing, PERIOD, force=True)
    assert result.action == "reissued" and result.revision == 2
    new = env.views()["acme"].invoice
    assert new.total != old.total
    summary = env.push()
    assert summary.revision == 2 and summary.ok
    credits = [p for p in summary.pushed if p["kind"] == "credit" and p["consumer"] == "acme"]
    assert sorted(c["minor_units"] for c in credits) == sorted(-i["amount"] for i in old_items)
    [draft] = env.invoices("cus_acme")  # still a draft: everything on it
    assert draft["total"] == cents(new.total)
    news = [i for i in env.items("cus_acme") if i["metadata"]["meterline_revision"] == "2"]
    assert len(news) == len(old_items) * 2  # a credit per old item, then the new items
    assert env.push().pushed == []  # once
    assert_once(env)


def test_a_reissue_after_the_draft_was_finalised_in_stripe_goes_on_a_new_draft(
    env: Env,
) -> None:
    env.push()
    old = env.views()["acme"].invoice
    [first] = env.invoices("cus_acme")
    env.client.client.v1.invoices.finalize_invoice(first["id"])
    env.configure(CHEAPER)
    reprice(env.store, env.pricing, PERIOD, force=True)
    new = env.views()["acme"].invoice
    env.push()
    finalised, second = env.invoices("cus_acme")
    assert finalised["status"] == "open" and finalised["total"] == cents(old.total)
    assert second["status"] == "draft" and second["total"] == cents(new.total) - cents(old.total)
    assert sum(i["amount"] for i in env.items("cus_acme")) == cents(new.total)
    assert env.push().pushed == []
    assert_once(env)


def test_reprice_adjustments_are_their_own_items_and_credited_on_reissue(env: Env) -> None:
    env.push()
    billed = env.views()["acme"].invoice.total
    env.configure(CHEAPER)
    assert reprice(env.store, env.pricing, PERIOD).action == "adjusted"
    difference = env.views()["acme"].adjustments
    assert difference < 0
    summary = env.push()
    [adjustment] = [p for p in summary.pushed if p["consumer"] == "acme"]
    assert adjustment["kind"] == "adjustment" and adjustment["minor_units"] == cents(difference)
    assert "repriced at current prices" in adjustment["description"]
    [draft] = env.invoices("cus_acme")
    assert draft["total"] == cents(billed + difference)
    # a second price change: a second adjustment, its own item
    env.configure(CHEAPER.replace('input: "2.00", cache_read: "1.00"', 'input: "1.00", '
                                  'cache_read: "1.00"', 1))  # fmt: skip
    assert reprice(env.store, env.pricing, PERIOD).action == "adjusted"
    view = env.views()["acme"]
    assert [p["kind"] for p in env.push().pushed if p["consumer"] == "acme"] == ["adjustment"]
    assert env.invoices("cus_acme")[0]["total"] == cents(view.invoice.total + view.adjustments)
    # re-issued: the adjustments are credited too, Stripe nets to the new revision
    reprice(env.store, env.pricing, PERIOD, force=True)
    env.push()
    assert env.invoices("cus_acme")[0]["total"] == cents(env.views()["acme"].invoice.total)
    assert_once(env)


# --- faults: 429 and 500s -------------------------------------------------------------------


def test_429s_and_500s_are_retried_or_settled_without_a_duplicate(env: Env) -> None:
    env.client = client_for(env.fake, attempts=8)
    faults = env.fake.state.faults
    path = "/v1/invoiceitems"
    faults.inject("rate_limit", times=3, path=path, retry_after=0)
    faults.inject("lock_timeout", times=1, path=path)
    faults.inject("drop_after", times=1, path=path)  # applied, answer lost: same key replays
    faults.inject("server_error_after", times=1, path=path)  # applied, then a saved 500
    faults.inject("server_error", times=1, path=path)  # not applied, a saved 500
    first = env.push()
    assert len(first.unknown) == 2 and not first.ok  # the two 500s: not guessed
    assert_once(env)
    second = env.push()
    assert second.ok and second.recovered == 1  # the applied one, found by listing
    assert [p["kind"] for p in second.pushed] == ["line"]  # the other, under a new key
    views = env.views()
    for consumer, customer in (("acme", "cus_acme"), ("beta", "cus_beta")):
        [draft] = env.invoices(customer)
        assert draft["total"] == cents(views[consumer].invoice.total)
    assert_once(env)
    assert env.push().pushed == []


def test_a_lost_answer_is_settled_from_stripe_after_its_key_expired(env: Env) -> None:
    """Why the table and a listing, not the idempotency keys alone: 25 h later Stripe has
    forgotten the key, a blind re-send would bill the line twice."""
    env.fake.state.faults.inject("drop_after", times=4, path="/v1/invoiceitems")  # all retries
    first = env.push()
    assert len(first.unknown) == 1
    env.fake.state.clock.advance(25 * 3600)
    env.fake.state.prune()
    second = env.push()
    assert second.recovered == 1 and second.ok
    assert_once(env)
    assert env.invoices("cus_acme")[0]["total"] == cents(env.views()["acme"].invoice.total)


def test_a_draft_whose_answer_was_lost_is_not_created_twice(env: Env) -> None:
    env.fake.state.faults.inject("drop_after", times=4, path="/v1/invoices")
    first = env.push()
    assert len(first.unknown) == 1 and env.items("cus_acme") == []
    env.fake.state.clock.advance(25 * 3600)
    env.fake.state.prune()
    env.push()
    assert len(env.invoices("cus_acme")) == 1 and len(env.invoices("cus_beta")) == 1
    assert_once(env)


# --- rounding: Stripe's minor units -------------------------------------------------------------


def test_sub_unit_amounts_are_split_so_the_items_sum_to_the_total(
    store: Store, tmp_path: Path, fake: StandinServer
) -> None:
    """UGX: meterline rates to 2 decimals, Stripe takes whole shillings: largest remainder."""
    ugx = CONFIG_YAML.replace("currency: USD", "currency: UGX")
    insert_calls(store, [*CALLS, *INITECH])
    path = tmp_path / "meterline.yaml"
    path.write_text(ugx + STRIPE, encoding="utf-8")
    pricing = load_store_pricing(store, path)
    finalize(store, pricing, PERIOD)
    summary = push_invoices(store, pricing, load_stripe_config(path), PERIOD,
                            client=client_for(fake))  # fmt: skip
    assert summary.ok
    invoice = get_invoices(store, pricing, month(PERIOD), scope=Scope.ALL)["acme"].invoice
    assert invoice.total == Decimal("9.23")
    [draft] = [i for i in fake.state.invoices.values() if i["customer"] == "cus_acme"]
    assert draft["currency"] == "ugx" and draft["total"] == 9  # 9.23 half-up, exactly
    amounts = [i["amount"] for i in fake.state.invoice_items.values()
               if i["customer"] == "cus_acme"]  # fmt: skip
    exact = [line.amount for line in invoice.lines] + [invoice.markup]
    split = split_exact(exact, "ugx")
    assert all(abs(a - e) < 1 for a, e in zip(split, exact, strict=True))
    assert amounts == [a for a in split if a]  # the items of 0 shillings are not pushed
    zero = [z for z in summary.zero if z["consumer"] == "acme"]
    assert len(zero) == split.count(0) > 0 and all(z["minor_units"] == 0 for z in zero)


# --- the CLI -------------------------------------------------------------------------------------

runner = CliRunner()


def _cli(env: Env, *args: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    monkeypatch.setenv("STRIPE_API_KEY", env.fake.api_key)
    monkeypatch.setenv("METERLINE_STRIPE_API_BASE", env.fake.base_addresses["api"])
    return runner.invoke(app, ["stripe", "push-invoices", *args, "--data-dir",
                               env.store.data_dir, "--database", env.store.database,
                               "--config", str(env.path)])  # fmt: skip


def test_cli_refuses_an_unfinalised_period_in_one_line(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _cli(env, "--period", "2026-04", monkeypatch=monkeypatch)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line == (
        "error: period 2026-04 is not finalised: only finalised invoices are pushed; run "
        "'meterline finalize --period 2026-04' first"
    )
    assert "Traceback" not in result.output and env.fake.state.requests == []


def test_cli_pushes_reports_and_reruns(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    dry = _cli(env, "--period", PERIOD, "--dry-run", monkeypatch=monkeypatch)
    assert dry.exit_code == 0, dry.output
    assert "Would push:" in dry.stdout and env.fake.state.requests == []
    assert "would push 18 items" in dry.stdout and "skipped 1 of amount 0" in dry.stdout
    result = _cli(env, "--period", PERIOD, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    assert "Reported (not pushed):" in result.stdout and "initech" in result.stdout
    assert "pushed 18 items (0 credits, 0 adjustments), drafts created 2" in result.stdout
    again = _cli(env, "--period", PERIOD, "--format", "json", monkeypatch=monkeypatch)
    assert again.exit_code == 0 and json.loads(again.stdout)["unchanged"] == 18
    assert json.loads(again.stdout)["pushed"] == []


def test_the_api_route_pushes_for_the_admin_only(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from meterline.aggregator.app import create_app
    from meterline.aggregator.keys import create_key
    from meterline.settings import ServerSettings

    monkeypatch.setenv("STRIPE_API_KEY", env.fake.api_key)
    monkeypatch.setenv("METERLINE_STRIPE_API_BASE", env.fake.base_addresses["api"])
    client = TestClient(create_app(ServerSettings(config=env.path, admin_key="k"), env.store))
    _, secret = create_key(env.store, consumer="acme", scopes=("read",))
    url = f"/v1/stripe/push-invoices?period={PERIOD}"
    assert client.post(url, headers={"authorization": f"Bearer {secret}"}).status_code == 403
    admin = {"authorization": "Bearer k"}
    refused = client.post("/v1/stripe/push-invoices?period=2026-04", headers=admin)
    assert refused.status_code == 409 and "not finalised" in refused.json()["detail"]
    bad = client.post("/v1/stripe/push-invoices?period=2026-13", headers=admin)
    assert bad.status_code == 422
    dry = client.post(url + "&dry_run=true", headers=admin)
    assert dry.status_code == 200 and len(dry.json()["pushed"]) == 18 and env.items() == []
    done = client.post(url, headers=admin).json()
    assert done["ok"] and len(done["pushed"]) == 18 and len(env.items()) == 18


def test_cli_through_a_running_server(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """``METERLINE_API_URL`` set: the command runs in the server (which holds the key)."""
    from tests.aggregator.test_invoices_cli import serve

    monkeypatch.setenv("STRIPE_API_KEY", env.fake.api_key)
    monkeypatch.setenv("METERLINE_STRIPE_API_BASE", env.fake.base_addresses["api"])
    with serve(env.store, env.path, monkeypatch):
        refused = runner.invoke(app, ["stripe", "push-invoices", "--period", "2026-04"])
        assert refused.exit_code == 1 and "not finalised" in refused.stderr
        done = runner.invoke(app, ["stripe", "push-invoices", "--period", PERIOD, "--format",
                                   "json"])  # fmt: skip
        assert done.exit_code == 0, done.output
        assert len(json.loads(done.stdout)["pushed"]) == 18 and len(env.items()) == 18
