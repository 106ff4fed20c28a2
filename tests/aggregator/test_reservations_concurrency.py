"""The hard limit under concurrency: 50 reserves at once, from 50 threads and from 4
processes, over HTTP to one server (uvicorn, FastAPI's thread pool), never overshoot.

The limit holds exactly ten worst cases (10 × 0.0072); the calls are released together
by a barrier. Without the ledger's lock around check and insert, several threads pass
the check before any inserts (check-then-increment, the peers' failure)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
import uvicorn

from tests.aggregator._budgets import ADMIN, budget_app, reserve_body

LIMIT = "0.0720"
FITS = 10


@pytest.fixture
def server(store, tmp_path) -> Iterator[str]:
    app = budget_app(store, tmp_path, None, snapshot_seconds=1.0)  # the serve default
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    headers = {"authorization": f"Bearer {ADMIN}"}
    put = httpx.put(f"{url}/v1/budgets/acme", headers=headers,
                    json={"limit": LIMIT, "unit": "USD", "period": "month"})  # fmt: skip
    assert put.status_code == 201, put.text
    try:
        yield url
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _check(url: str, answers: list[dict]) -> None:
    assert len(answers) >= 50
    allowed = [a for a in answers if a["allowed"]]
    assert len(allowed) == FITS, [a.get("budget", {}).get("reserved") for a in answers]
    assert len({a["id"] for a in allowed}) == FITS
    state = httpx.get(f"{url}/v1/budgets/acme", headers={"authorization": f"Bearer {ADMIN}"})
    body = state.json()
    assert Decimal(body["reserved"]) == Decimal(LIMIT) and Decimal(body["remaining"]) == 0
    for denied in (a for a in answers if not a["allowed"]):
        assert Decimal(denied["budget"]["reserved"]) + Decimal(denied["budget"]["spent"]) <= (
            Decimal(LIMIT))  # fmt: skip


def test_fifty_threads_never_overshoot(server):
    barrier = threading.Barrier(50)
    answers: list[dict] = []
    lock = threading.Lock()

    def one() -> None:
        with httpx.Client(headers={"authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
            barrier.wait()
            r = c.post(f"{server}/v1/reservations", json=reserve_body())
            r.raise_for_status()
            with lock:
                answers.append(r.json())

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check(server, answers)


CHILD = r"""
import json, sys, threading, time, httpx
url, key, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
body = json.loads(sys.stdin.read())
out, lock = [], threading.Lock()
def one():
    with httpx.Client(headers={"authorization": "Bearer " + key}, timeout=60) as c:
        time.sleep(max(0.0, start - time.time()))
        r = c.post(url + "/v1/reservations", json=body)
        r.raise_for_status()
        with lock:
            out.append(r.json())
threads = [threading.Thread(target=one) for _ in range(n)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(out))
"""


def test_four_processes_never_overshoot(server):
    start = time.time() + 3  # every process fires at the same wall-clock instant
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, server, ADMIN, str(n), str(start)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (13, 13, 12, 12)
    ]
    answers: list[dict] = []
    for p in procs:
        out, err = p.communicate(json.dumps(reserve_body()), timeout=120)
        assert p.returncode == 0, err
        answers += json.loads(out)
    _check(server, answers)
