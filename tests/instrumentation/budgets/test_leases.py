"""Leases through the guard (real SDKs → the provider simulator; a real aggregator over
chdb that counts the requests it gets): a call far from every limit makes no request to
the aggregator; near the limit the guard falls back to per-call reservations and blocks
exactly; 50 threads and 4 processes with leases on never overshoot (and do use leases);
a process killed holding a lease: the lease expires, the reported spend stays; spans
delivered twice count once; a lowered budget revokes the lease; a lease unused for its
use window is returned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import openai
import pytest

import meterline
from meterline.instrumentation import consumer
from meterline.instrumentation.budgets import _lease
from tests.aggregator._budgets import ADMIN
from tests.aggregator._calls import Call, insert_calls
from tests.conftest import migrated_store

from ._calls import IDS, MESSAGES, MODELS, VARIANTS, call
from .conftest import Aggregator, Counting, cost, instrument_guarded, run_aggregator, settled

RID = "meterline.budget.reservation_id"
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")
FULL = {"x-simulator-output-tokens": "40"}
"""Every call uses its whole output: each costs the same, a little under its worst case."""


@pytest.fixture(scope="module")
def counting() -> Counting:
    return Counting(None)


@pytest.fixture(scope="module")
def stored(engine_dir):
    yield from migrated_store(engine_dir, "lease")


@pytest.fixture(scope="module")
def agg(stored, counting, tmp_path_factory):
    yield from run_aggregator(stored, tmp_path_factory.mktemp("agg"), counting=counting)


@pytest.fixture
def leased(monkeypatch, agg):
    yield from instrument_guarded(monkeypatch, agg.url, METERLINE_BUDGETS_LEASE="on")


def returned() -> None:
    """Return every held lease (as at exit) and wait for the reports and returns."""
    _lease.retire_all()
    settled()


def ids(recorded) -> list[str]:
    return [s.attributes[RID] for s in recorded.spans()]


def stream_once(client: openai.OpenAI, headers: dict[str, str] = FULL) -> tuple[int, int]:
    chunks = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=40, stream=True,
        stream_options={"include_usage": True}, extra_headers=headers,
    )  # fmt: skip
    usage = [c.usage for c in chunks if c.usage is not None][-1]
    return usage.prompt_tokens, usage.completion_tokens


def worst_case(sim, agg: Aggregator, who: str) -> Decimal:
    """One :func:`stream_once` call's worst case, as the aggregator prices it."""
    agg.budget(who + "-probe", limit="0.000001")
    with consumer(who + "-probe"), pytest.raises(meterline.BudgetExceeded) as info:
        stream_once(openai.OpenAI(base_url=sim.openai_base_url, api_key="sk"))
    return info.value.estimate


@pytest.mark.parametrize(("sdk", "mode", "stream"), VARIANTS, ids=IDS)
def test_a_call_far_from_the_limit_makes_no_request(
    sim, agg, counting, leased, who, sdk, mode, stream
):
    agg.budget(who, limit="5.00")
    with consumer(who):
        usages = [call(sim, sdk, mode, stream)]
        before, started = list(counting.requests), time.monotonic()
        usages += [call(sim, sdk, mode, stream) for _ in range(3)]
        elapsed = time.monotonic() - started
    new = [r for r in counting.requests[len(before) :] if r == ("POST", "/v1/reservations")]
    # no reserve for the three calls (a new lease only after the 5 s use window)
    assert len(new) <= elapsed // _lease_use_seconds(), (new, elapsed)
    rids = ids(leased)
    lease_id = rids[0].rpartition(".")[0]
    assert lease_id.startswith("lse_") and rids[:4] == [f"{lease_id}.{n}" for n in (1, 2, 3, 4)]
    returned()
    state = agg.state(who)
    assert Decimal(state["reserved"]) == 0  # the lease returned
    assert Decimal(state["spent"]) == sum(cost(MODELS[sdk], i, o) for i, o in usages)
    assert ("DELETE", f"/v1/reservations/{lease_id}") in counting.requests


def _lease_use_seconds() -> int:
    from meterline.aggregator.budgets._lease import USE_SECONDS

    return USE_SECONDS


def test_near_the_limit_falls_back_to_reservations_and_blocks_exactly(sim, agg, leased, who):
    worst = worst_case(sim, agg, who)
    limit = 40 * worst
    agg.budget(who, limit=str(limit))
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk", max_retries=0)
    usages = []
    with consumer(who):
        for _ in range(80):
            try:
                usages.append(stream_once(client))
            except meterline.BudgetExceeded as exc:
                assert exc.policy == "block"
                break
            settled()
    actual = cost("gpt-4o", *usages[0])
    assert all(u == usages[0] for u in usages) and actual < worst
    # exactly the calls a per-call reservation admits: call k+1 goes iff k × actual + worst
    # fits the limit
    assert len(usages) == int((limit - worst) / actual) + 1
    rids = ids(leased)
    assert rids[0].startswith("lse_") and rids[-1].startswith("rsv_")
    assert any(r.endswith(".2") for r in rids)  # a lease was spent down without round trips
    returned()
    state = agg.state(who)
    assert Decimal(state["reserved"]) == 0
    assert Decimal(state["spent"]) == len(usages) * actual <= limit


SLOW = {**FULL, "x-simulator-chunk-delay-ms": "20"}


@pytest.fixture
def leased_closed(monkeypatch, agg):
    """Leases on, fail closed with a long timeout (as the per-call concurrency tests)."""
    yield from instrument_guarded(
        monkeypatch, agg.url, METERLINE_BUDGETS_LEASE="on", METERLINE_BUDGETS_FAIL="closed",
        METERLINE_BUDGETS_TIMEOUT="60",
    )  # fmt: skip


def test_fifty_threads_with_leases_never_overshoot(sim, agg, leased_closed, who):
    worst = worst_case(sim, agg, who)
    limit = 60 * worst
    agg.budget(who, limit=str(limit))
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk", max_retries=0)
        barrier.wait()
        done = []
        for _ in range(8):
            try:
                with consumer(who):
                    stream_once(client, SLOW)
                done.append("allowed")
            except meterline.BudgetExceeded as exc:
                done.append("refused" if exc.policy == "block" else repr(exc))
                break
            except Exception as exc:
                done.append(repr(exc))
                break
        with lock:
            outcomes.extend(done)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert set(outcomes) <= {"allowed", "refused"}, outcomes
    rids = ids(leased_closed)
    assert len(rids) == outcomes.count("allowed") and outcomes.count("refused") >= 1
    under_lease = [r for r in rids if r.startswith("lse_")]
    assert max(int(r.rpartition(".")[2]) for r in under_lease) >= 2, rids
    returned()
    state = agg.state(who)
    assert Decimal(state["reserved"]) == 0
    assert 0 < Decimal(state["spent"]) <= limit


CHILD = r"""
import json, sys, threading, time
import openai, meterline
base, n, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out, lock = [], threading.Lock()
def one():
    client = openai.OpenAI(base_url=base, api_key="sk", max_retries=0)
    time.sleep(max(0.0, start - time.time()))
    done = []
    for _ in range(8):
        try:
            chunks = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user",
                "content": "Say something about foxes and their dens."}], max_tokens=40,
                stream=True, extra_headers={"x-simulator-chunk-delay-ms": "20",
                                             "x-simulator-output-tokens": "40"})
            sum(1 for _ in chunks)
            done.append("allowed")
        except meterline.BudgetExceeded as exc:
            done.append("refused" if exc.policy == "block" else repr(exc))
            break
        except Exception as exc:
            done.append(repr(exc))
            break
    with lock:
        out.extend(done)
threads = [threading.Thread(target=one) for _ in range(n)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(out))
"""


@pytest.mark.skipif(not INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
def test_four_processes_with_leases_never_overshoot(sim, agg, stored, leased, who, tmp_path):
    worst = worst_case(sim, agg, who)
    limit = 60 * worst
    agg.budget(who, limit=str(limit))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METERLINE_"))}
    env.update(
        METERLINE_BUDGETS="enforce", METERLINE_API_URL=agg.url, METERLINE_API_KEY=ADMIN,
        METERLINE_CONSUMER_ID=who, METERLINE_BUDGETS_FAIL="closed",
        METERLINE_BUDGETS_TIMEOUT="60", METERLINE_SPOOL_DIR=str(tmp_path / "spool"),
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
    )  # fmt: skip
    start = time.time() + 6
    procs = [
        subprocess.Popen(
            [str(INSTRUMENT), sys.executable, "-c", CHILD, sim.openai_base_url, str(n), str(start)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for n in (13, 13, 12, 12)
    ]
    outcomes: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        outcomes += json.loads(out.strip().splitlines()[-1])
    assert set(outcomes) <= {"allowed", "refused"}, outcomes
    assert outcomes.count("refused") >= 1
    # the calls made under leases, as the aggregator recorded them (one row per state)
    _, rows = stored.query(
        "SELECT countDistinct(Id) FROM {db}.budget_reservations "
        "WHERE ConsumerId = {c:String} AND Id LIKE 'lse%.%'",
        {"c": who},
    )
    assert rows[0][0] >= 2
    state = agg.state(who)
    assert Decimal(state["reserved"]) == 0  # each process returned its leases at exit
    assert 0 < Decimal(state["spent"]) <= limit


KILLED = r"""
import json, sys
from opentelemetry.sdk.trace import TracerProvider
from meterline.instrumentation import consumer, instrument
from meterline.instrumentation.budgets._outbox import OUTBOX
import openai
instrument(tracer_provider=TracerProvider())
client = openai.OpenAI(base_url=sys.argv[1], api_key="sk", max_retries=0)
with consumer(sys.argv[2]):
    out = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user",
        "content": "Say hi."}], max_tokens=40)
    OUTBOX.flush(10)
    print(json.dumps([out.usage.prompt_tokens, out.usage.completion_tokens]), flush=True)
    chunks = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Tell a long story."}],
        max_tokens=400, stream=True,
        extra_headers={"x-simulator-chunk-delay-ms": "500", "x-simulator-output-tokens": "400"})
    for chunk in chunks:
        print("chunk", flush=True)
"""
TTL = 6


def test_a_killed_process_s_lease_expires_and_its_reported_spend_stays(
    sim, agg, counting, who, tmp_path
):
    agg.budget(who, limit="5.00")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METERLINE_"))}
    env.update(METERLINE_BUDGETS="enforce", METERLINE_API_URL=agg.url, METERLINE_API_KEY=ADMIN,
               METERLINE_BUDGETS_TTL=str(TTL), METERLINE_SPOOL_DIR=str(tmp_path / "spool"),
               OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")  # fmt: skip
    reserves = counting.reserves()
    child = subprocess.Popen([sys.executable, "-c", KILLED, sim.openai_base_url, who], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first.startswith("["), child.stderr.read() if child.stderr else ""
        used_in, used_out = json.loads(first)
        assert child.stdout.readline().strip() == "chunk"  # call 2 streaming, under the lease
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert counting.reserves() == reserves + 1  # one lease; call 2 made no round trip
    spent = cost("gpt-4o", used_in, used_out)
    state = agg.state(who)
    assert Decimal(state["spent"]) == spent  # call 1 was reported
    assert Decimal(state["reserved"]) > 0  # the rest of the lease, held until its TTL
    deadline = time.monotonic() + TTL + 30
    while Decimal(agg.state(who)["reserved"]) != 0:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.2)
    assert Decimal(agg.state(who)["spent"]) == spent


def test_spans_delivered_twice_count_once(sim, agg, stored, leased, who):
    agg.budget(who, limit="50.00")
    big = {"x-simulator-output-tokens": "2000"}
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk", max_retries=0)
    with consumer(who):
        usages = []
        for _ in range(2):
            out = client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, max_tokens=2000, extra_headers=big
            )
            usages.append((out.usage.prompt_tokens, out.usage.completion_tokens, out.id))
    returned()
    exact = sum(cost("gpt-4o", i, o) for i, o, _ in usages)
    assert Decimal(agg.state(who)["spent"]) == exact  # reported, not stored yet
    rids = ids(leased)
    assert all(r.startswith("lse_") for r in rids)
    now = datetime.now(UTC)
    calls = [
        Call(now, consumer=who, input=i, output=o, response_id=rid_resp, reservation_id=rid)
        for (i, o, rid_resp), rid in zip(usages, rids, strict=True)
    ]
    insert_calls(stored, calls + calls)  # a retried export: every span twice
    insert_calls(stored, calls[:1])  # and one of them late, a third time
    time.sleep(1.1)  # the aggregator's snapshot of the store is at most 1 s old
    agg.state(who)
    state = agg.state(who)
    invoice = agg.http.get(f"/v1/invoices/{who}", params={"period": now.strftime("%Y-%m")})
    assert invoice.status_code == 200, invoice.text
    # once: 4 000 output tokens → $0.032 → 0.03 on the invoice (twice would be 0.06, and the
    # reports counted beside the spans 0.03 + 0.032)
    assert state["spent"] == invoice.json()["total"] == "0.03"
    assert Decimal(state["reserved"]) == 0


def test_a_lowered_budget_revokes_the_lease(sim, agg, leased, who):
    agg.budget(who, limit="5.00")
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk", max_retries=0)
    with consumer(who):
        first = stream_once(client)
        settled()  # call 1 reported: the lease is still good
        spent = cost("gpt-4o", *first)
        agg.budget(who, limit=str(spent))  # nothing more fits
        # call 2 is admitted from the lease granted under the old limit (the guard learns of
        # the change from its next report), then the report answers revoked
        second = stream_once(client)
        settled()
        with pytest.raises(meterline.BudgetExceeded):
            stream_once(client)
    rids = ids(leased)
    assert [r.rpartition(".")[2] for r in rids] == ["1", "2"]
    state = agg.state(who)
    assert Decimal(state["reserved"]) == 0  # returned when revoked, not at its TTL
    assert Decimal(state["spent"]) == spent + cost("gpt-4o", *second)


def test_an_idle_lease_is_returned_after_its_use_window(sim, agg, leased, who):
    agg.budget(who, limit="5.00")
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk", max_retries=0)
    with consumer(who):
        usage = stream_once(client)
    settled()
    assert Decimal(agg.state(who)["reserved"]) > 0
    deadline = time.monotonic() + _lease_use_seconds() + 10
    while Decimal(agg.state(who)["reserved"]) != 0:
        assert time.monotonic() < deadline, "the idle lease was not returned"
        time.sleep(0.2)
    assert Decimal(agg.state(who)["spent"]) == cost("gpt-4o", *usage)


def test_calls_under_a_rate_limit_reserve_each_time(sim, agg, counting, leased, who):
    agg.budget(who, limit="5.00")
    r = agg.http.put(
        f"/v1/rate-limits/{who}", json={"limit": "3", "unit": "requests", "per": "minute"}
    )
    assert r.status_code in (200, 201), r.text
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk", max_retries=0)
    before = counting.reserves()
    with consumer(who):
        for _ in range(3):
            stream_once(client)
        with pytest.raises(meterline.RateLimited):  # the window's own rule, never a lease's
            stream_once(client)
    assert counting.reserves() - before == 4
    assert all(r.startswith("rsv_") for r in ids(leased))
