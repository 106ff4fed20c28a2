"""Rate limits under concurrency: 50 threads and 4 processes over HTTP, one server or two
replicas sharing Redis, never let more through than the limit; and while the clock moves,
no sliding window — wherever it starts — ever holds more than the limit.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import uvicorn

from meterline.aggregator.budgets import BudgetService, ReserveRequest, load_budgets_config
from meterline.aggregator.routes._pricing import app_pricing
from tests._redis import start_redis
from tests.aggregator._budgets import ADMIN, Clock, budget_app, reserve_body
from tests.aggregator._calls import utc
from tests.aggregator.pricing_config import CONFIG_YAML, write_config
from tests.aggregator.test_rate_limits import redis_app
from tests.aggregator.test_reservations_concurrency import CHILD

FITS = 10
LIMITS = [
    {"limit": str(FITS), "unit": "requests", "per": "minute"},
    {"limit": str(FITS * 1500 + 1499), "unit": "tokens", "per": "hour"},  # also exactly 10
]


def _serve(app) -> tuple[str, uvicorn.Server, threading.Thread, socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", srv, thread, sock


@pytest.fixture(params=["memory", "redis"])
def servers(request, store, tmp_path) -> Iterator[list[str]]:
    """One server (memory) or two replicas sharing one Redis, with the limits set."""
    if request.param == "memory":
        apps = [budget_app(store, tmp_path, None, snapshot_seconds=1.0)]
        proc = None
    else:
        url, proc = start_redis(tmp_path)
        apps = [redis_app(store, tmp_path, None, url) for _ in range(2)]
    served = [_serve(app) for app in apps]
    headers = {"authorization": f"Bearer {ADMIN}"}
    for body in LIMITS:
        r = httpx.put(f"{served[0][0]}/v1/rate-limits/acme", headers=headers, json=body)
        assert r.status_code == 201, r.text
    for app in apps[1:]:  # a replica sees another's PUT after a restart: hand it over
        for rate in apps[0].state.budgets.registry.all_rates():
            app.state.budgets.registry.put_rate(rate)
    try:
        yield [s[0] for s in served]
    finally:
        for _, srv, thread, sock in served:
            srv.should_exit = True
            thread.join(timeout=30)
            sock.close()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)


def _check(urls: list[str], answers: list[dict]) -> None:
    assert len(answers) == 50
    allowed = [a for a in answers if a["allowed"]]
    assert len(allowed) == FITS and len({a["id"] for a in allowed}) == FITS
    refused = [a for a in answers if not a["allowed"]]
    assert all(a["policy"] == "rate_limited" and a["retry_after"] > 0 for a in refused)
    state = httpx.get(f"{urls[-1]}/v1/rate-limits/acme",
                      headers={"authorization": f"Bearer {ADMIN}"}).json()  # fmt: skip
    used = {r["unit"]: r["used"] for r in state["rate_limits"]}
    assert used == {"requests": str(FITS), "tokens": str(FITS * 1500)}


def test_fifty_threads_never_pass_the_limit(servers):
    barrier = threading.Barrier(50)
    answers: list[dict] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        with httpx.Client(headers={"authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
            barrier.wait()
            r = c.post(f"{servers[i % len(servers)]}/v1/reservations", json=reserve_body())
            r.raise_for_status()
            with lock:
                answers.append(r.json())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check(servers, answers)


def test_four_processes_never_pass_the_limit(servers):
    start = time.time() + 3  # every process fires at the same wall-clock instant
    procs = []
    for i, n in enumerate((13, 13, 12, 12)):
        argv = [sys.executable, "-c", CHILD, servers[i % len(servers)], ADMIN, str(n), str(start)]
        procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    answers: list[dict] = []
    for p in procs:
        out, err = p.communicate(json.dumps(reserve_body()), timeout=120)
        assert p.returncode == 0, err
        answers += json.loads(out)
    _check(servers, answers)


class SteppingClock(Clock):
    """A clock another thread moves forward in steps (thread-safe reads)."""


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_no_window_ever_holds_more_than_the_limit(store, tmp_path, backend):
    """50 threads reserve as fast as they can for 6 simulated minutes while the clock
    jumps 1-20 s at a time (so calls land on every side of the windows' edges); afterwards
    every window of 60 s (anchored at each admitted call) holds at most the limit, and the
    limit was reached in several windows (the load did press on it)."""
    clock = SteppingClock(utc(2026, 3, 20, 12, 0, 50))  # late in a calendar minute
    path = write_config(tmp_path, CONFIG_YAML)
    url, proc = start_redis(tmp_path) if backend == "redis" else (None, None)
    services = [
        BudgetService(store, load_budgets_config(path, currency="USD"), currency="USD",
                      snapshot_seconds=1.0, clock=clock, redis_url=url)
        for _ in range(2 if url else 1)
    ]  # fmt: skip
    from meterline.aggregator.budgets import rate_limit_from_dict

    rate = rate_limit_from_dict("acme", {"limit": "7", "unit": "requests", "per": "minute"},
                                currency="USD")  # fmt: skip
    for s in services:
        s.registry.put_rate(rate)
    pricing = app_pricing(budget_app(store, tmp_path, None))
    end = clock.now + timedelta(minutes=6)
    admitted: list = []
    lock = threading.Lock()
    stop = threading.Event()

    def hammer(i: int) -> None:
        service = services[i % len(services)]
        req = ReserveRequest("acme", None, "openai", "gpt-4o", 1000, 500)
        while not stop.is_set():
            d = service.reserve(pricing, req)
            if d.allowed:
                with lock:
                    admitted.append(d.reservation.created_at)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    rng = random.Random(5)
    try:
        while clock.now < end:
            time.sleep(0.05)
            clock.now = clock.now + timedelta(seconds=rng.randint(1, 20))
    finally:
        stop.set()
        for t in threads:
            t.join()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    times = sorted(admitted)
    window = timedelta(seconds=60)
    counts = [sum(1 for u in times if t - window < u <= t) for t in times]
    assert max(counts) <= 7, max(counts)
    assert counts.count(7) >= 3, counts  # the limit was reached, more than once
    # every window starting anywhere: it suffices to anchor windows at admitted instants
    starts = [sum(1 for u in times if t <= u < t + window) for t in times]
    assert max(starts) <= 7
