"""``POST /v1/estimate`` and ``meterline.estimate``: input counted offline, output from the
consumer's own history, costs at the price in force now (tier from the estimated input,
plan markup), each budget's fit, tenancy and bad input.

Hand-computed amounts (tests/aggregator/pricing_config.py, the clock on 2026-03-20):
gpt-4o 2.00 / 8.00 per million in / out, acme +20 % markup. The cookbook's messages are
124 tokens for gpt-4o (tests/instrumentation/test_tokens.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import uvicorn

import meterline
from meterline.aggregator.keys import create_key
from meterline.estimates import EstimateFailed
from tests.aggregator._budgets import ADMIN, Clock, admin, budget_app
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator._tenants import client
from tests.instrumentation.test_tokens import COOKBOOK_MESSAGES

pytest.importorskip("bpe_openai")

ROOT = Path(__file__).resolve().parents[2]
NOW = utc(2026, 3, 20, 12)
HARD = {"unit": "USD", "period": "month", "mode": "hard"}


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def app(store, tmp_path, clock):
    return budget_app(store, tmp_path, clock)


def body(**kw) -> dict:
    b = {"consumer": "acme", "provider": "openai", "model": "gpt-4o",
         "messages": COOKBOOK_MESSAGES, "max_tokens": 500}  # fmt: skip
    b.update(kw)
    return b


def test_costs_without_history(app):
    r = admin(app).post("/v1/estimate", json=body())
    assert r.status_code == 200, r.text
    e = r.json()
    assert (e["input_tokens"], e["input_exact"]) == (124, True)
    assert e["output_tokens"] == {"p50": 256, "p95": 500, "worst_case": 500,
                                  "source": "default", "history_calls": 0}  # fmt: skip
    # (124 * 2 + 256 * 8) / 1e6 * 1.2 and (124 * 2 + 500 * 8) / 1e6 * 1.2
    assert e["cost"] == {"p50": "0.0027552", "p95": "0.0050976", "worst_case": "0.0050976"}
    assert e["currency"] == "USD" and e["priced"] is True
    assert e["prices_per_million"]["input"] == "2.00" and e["budgets"] == []
    assert e["rate_limits"] == []
    assert e["allowed"] is True


def test_output_history_of_this_consumer_feature_and_model(app, store):
    recent = NOW - timedelta(days=2)
    calls = [Call(recent, output=o, feature="summarize", input=10) for o in range(100, 1100, 100)]
    calls += [Call(recent, output=5, feature="chat", input=10) for _ in range(20)]
    calls += [Call(recent, output=1, feature="rare", input=10) for _ in range(4)]
    # none of these is a sample: another consumer, another model, a failed call, too old
    calls += [Call(recent, consumer="zz", output=99_999, feature="summarize") for _ in range(9)]
    calls += [Call(recent, model="gpt-4o-mini", output=99_999, feature="summarize")] * 9
    calls += [Call(recent, output=99_999, feature="summarize", error="500")] * 9
    calls += [Call(NOW - timedelta(days=31), output=99_999, feature="summarize")] * 9
    calls += [Call(NOW + timedelta(hours=1), output=99_999, feature="summarize")] * 9
    insert_calls(store, calls)
    a = admin(app)
    own = a.post("/v1/estimate", json=body(feature="summarize", max_tokens=5000)).json()
    # quantilesExact over 100..1000: p50 = the 6th (600), p95 = the 10th (1000)
    assert own["output_tokens"] == {"p50": 600, "p95": 1000, "worst_case": 5000,
                                    "source": "feature", "history_calls": 10}  # fmt: skip
    assert own["cost"]["p50"] == "0.0060576"  # (124 * 2 + 600 * 8) / 1e6 * 1.2
    # a feature with too few calls: the consumer's calls of the model, every feature
    rare = a.post("/v1/estimate", json=body(feature="rare", max_tokens=5000)).json()
    assert rare["output_tokens"]["source"] == "consumer"
    assert rare["output_tokens"]["history_calls"] == 34
    assert rare["output_tokens"]["p50"] == 5
    # the worst case caps the expected figures
    capped = a.post("/v1/estimate", json=body(feature="summarize", max_tokens=700)).json()
    assert capped["output_tokens"]["p50"] == 600 and capped["output_tokens"]["p95"] == 700


def test_tier_is_chosen_from_the_estimated_input(app):
    a = admin(app)
    small = a.post("/v1/estimate", json=body(
        consumer="zz", provider="anthropic", model="claude-sonnet-4", messages=[
            {"role": "user", "content": "short"}], max_tokens=1000)).json()  # fmt: skip
    big = a.post("/v1/estimate", json=body(
        consumer="zz", provider="anthropic", model="claude-sonnet-4", messages=[
            {"role": "user", "content": "many words " * 80_000}], max_tokens=1000)).json()  # fmt: skip
    assert small["input_exact"] is False and small["input_tokens"] < 200_000
    assert big["input_tokens"] > 200_000
    assert small["prices_per_million"]["input"] == "3.00"
    assert big["prices_per_million"]["input"] == "6.00"
    expected = (Decimal(big["input_tokens"]) * 6 + 1000 * Decimal("22.5")) / 1_000_000
    assert Decimal(big["cost"]["worst_case"]) == expected


def test_budgets_are_checked_against_the_worst_case(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "0.0050976"})  # exactly the worst case
    a.put("/v1/budgets/acme?feature=chat", json={**HARD, "limit": "0.005", "mode": "soft"})
    a.put("/v1/budgets/acme?feature=chat", json={**HARD, "limit": "624", "unit": "tokens",
                                                 "period": "day"})  # fmt: skip
    e = a.post("/v1/estimate", json=body(feature="chat")).json()
    fits = {(b["feature"], b["unit"], b["period"]): b["worst_case_fits"] for b in e["budgets"]}
    assert fits == {(None, "USD", "month"): True, ("chat", "USD", "month"): True,
                    ("chat", "tokens", "day"): True}  # fmt: skip
    assert e["allowed"] is True
    # one token more than the token budget holds; nothing was reserved by estimating
    e = a.post("/v1/estimate", json=body(feature="chat", max_tokens=501)).json()
    fits = {(b["feature"], b["unit"]): b["worst_case_fits"] for b in e["budgets"]}
    assert fits[("chat", "tokens")] is False and fits[("chat", "USD")] is True
    assert fits[(None, "USD")] is False and e["allowed"] is False
    assert a.get("/v1/budgets/acme").json()["reserved"] == "0.00"


def test_rate_limits_are_checked_against_the_worst_case(app):
    a = admin(app)
    a.put("/v1/rate-limits/acme", json={"limit": "624", "unit": "tokens", "per": "minute"})
    a.put("/v1/rate-limits/acme", json={"limit": "1", "unit": "requests", "per": "hour",
                                        "model": "gpt-4o-mini"})  # fmt: skip
    e = a.post("/v1/estimate", json=body()).json()  # 124 + 500 tokens: exactly the limit
    assert [(r["unit"], r["worst_case_fits"]) for r in e["rate_limits"]] == [("tokens", True)]
    assert e["rate_limits"][0]["used"] == "0" and e["allowed"] is True
    e = a.post("/v1/estimate", json=body(max_tokens=501)).json()
    assert e["rate_limits"][0]["worst_case_fits"] is False and e["allowed"] is False
    # estimating reserves nothing: the window is still empty
    assert a.get("/v1/rate-limits/acme").json()["rate_limits"][0]["used"] == "0"


def test_unpriced_model_has_no_cost_and_fails_a_hard_money_budget(app):
    a = admin(app)
    a.put("/v1/budgets/acme", json={**HARD, "limit": "100"})
    e = a.post("/v1/estimate", json=body(model="acme-private-llm")).json()
    assert e["priced"] is False and e["prices_per_million"] is None
    assert e["cost"] == {"p50": None, "p95": None, "worst_case": None}
    assert e["budgets"][0]["worst_case_fits"] is False and e["allowed"] is False


def test_max_tokens_defaults_to_the_context_window(app):
    a = admin(app)
    e = a.post("/v1/estimate", json=body(max_tokens=None)).json()
    assert e["output_tokens"]["worst_case"] == 128_000 - 124
    r = a.post("/v1/estimate", json=body(model="acme-private-llm", max_tokens=None))
    assert r.status_code == 422 and "max_tokens is required" in r.json()["detail"]


def test_a_consumer_key_estimates_only_for_its_consumer(app, store):
    _, read = create_key(store, consumer="acme", scopes=["read"])
    _, reserve_only = create_key(store, consumer="acme", scopes=["reserve"])
    assert client(app, read).post("/v1/estimate", json=body()).status_code == 200
    other = client(app, read).post("/v1/estimate", json=body(consumer="zz"))
    assert other.status_code == 403 and "only for consumer 'acme'" in other.json()["detail"]
    assert client(app, reserve_only).post("/v1/estimate", json=body()).status_code == 403
    assert client(app, None).post("/v1/estimate", json=body()).status_code == 401


@pytest.mark.parametrize(
    "bad",
    [
        {"messages": None},
        {"max_tokens": 1.5},
        {"max_tokens": -1},
        {"max_tokens": "500"},
        {"api": "telepathy"},
        {"temperature": 0.2},
        {"consumer": ""},
        {"model": None},
    ],
)
def test_bad_requests_are_422(app, bad):
    r = admin(app).post("/v1/estimate", json=body(**bad))
    assert r.status_code == 422, r.text


@pytest.fixture
def server(store, tmp_path) -> Iterator[str]:
    app = budget_app(store, tmp_path, Clock(NOW))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_meterline_estimate_asks_the_server(server, monkeypatch):
    monkeypatch.setenv("METERLINE_API_URL", server)
    monkeypatch.setenv("METERLINE_API_KEY", ADMIN)
    e = meterline.estimate(consumer="acme", provider="openai", model="gpt-4o",
                           messages=COOKBOOK_MESSAGES, max_tokens=500)  # fmt: skip
    assert e["input_tokens"] == 124 and e["cost"]["worst_case"] == "0.0050976"
    with pytest.raises(EstimateFailed, match="422"):
        meterline.estimate(consumer="acme", provider="openai", model="gpt-4o")
    monkeypatch.setenv("METERLINE_API_KEY", "wrong")
    with pytest.raises(EstimateFailed, match="401"):
        meterline.estimate(consumer="acme", provider="openai", model="gpt-4o", prompt="x")


def test_meterline_estimate_opens_the_store_itself(tmp_path):
    """No server: the function opens the embedded store (in a process of its own, since a
    chdb engine is one per process)."""
    code = f"""
import json, meterline
from meterline.store import open_store
from tests.aggregator._calls import Call, insert_calls, utc
store = open_store(data_dir={str(tmp_path)!r})
store.migrate()
insert_calls(store, [Call(utc(2026, 1, 2), output=70, input=5)] * 5)
store.close()
e = meterline.estimate(consumer="acme", provider="openai", model="gpt-4o",
                       messages=[{{"role": "user", "content": "hi"}}], max_tokens=100,
                       data_dir={str(tmp_path)!r})
print(json.dumps(e))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, env={**os.environ, "METERLINE_API_URL": ""})  # fmt: skip
    assert out.returncode == 0, out.stderr
    e = json.loads(out.stdout.strip().splitlines()[-1])
    assert e["input_exact"] is True and e["input_tokens"] == 8  # 3 + 1 + 1 + 3
    assert e["priced"] is True and e["output_tokens"]["worst_case"] == 100


def test_meterline_estimate_without_a_store_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    with pytest.raises(EstimateFailed, match="is not a meterline store"):
        meterline.estimate(consumer="acme", provider="openai", model="gpt-4o", prompt="x",
                           data_dir=tmp_path / "nothing")  # fmt: skip
