"""Reservations shared by two replicas through a real Redis (Debian's ``redis-server``,
started here on a free port; skipped when it is not installed — ``.ci/run`` installs it).

Two budget services over one store and one Redis stand for two aggregator replicas: the
hard limit holds across them under 50 concurrent reserves from 4 processes, a settle
counts once whichever replica stores and sees the span, and reservations expire.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import uvicorn

from meterline.aggregator.app import create_app
from meterline.aggregator.budgets import BudgetService, load_budgets_config
from meterline.settings import ServerSettings
from tests.aggregator._budgets import ADMIN, Clock, reserve_body
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator._tenants import ADMIN_KEYS, client
from tests.aggregator.pricing_config import CONFIG_YAML, write_config
from tests.aggregator.test_reservations_concurrency import CHILD

pytest.importorskip("redis")
if shutil.which("redis-server") is None:
    pytest.skip(
        "redis-server is not installed (apt-get install redis-server)", allow_module_level=True
    )

HARD = {"unit": "USD", "period": "month", "mode": "hard"}


def replica(store, tmp_path, redis_url, clock=None, snapshot_seconds=0.0, yaml=CONFIG_YAML):
    path = write_config(tmp_path, yaml)
    app = create_app(ServerSettings(config=path, admin_key=",".join(ADMIN_KEYS)), store)
    app.state.budgets = BudgetService(
        store, load_budgets_config(path, currency="USD"), currency="USD",
        snapshot_seconds=snapshot_seconds, clock=clock, redis_url=redis_url,
    )  # fmt: skip
    return app


def test_two_replicas_share_reservations(store, tmp_path, redis_url):
    clock = Clock(utc(2026, 3, 20, 12))
    one = client(replica(store, tmp_path, redis_url, clock), ADMIN)
    two = client(replica(store, tmp_path, redis_url, clock), ADMIN)
    one.put("/v1/budgets/acme", json={**HARD, "limit": "0.0144"})
    two.app.state.budgets.registry.put(one.app.state.budgets.registry.all()[0])  # its PUT
    a = one.post("/v1/reservations", json=reserve_body()).json()
    b = two.post("/v1/reservations", json=reserve_body()).json()
    assert a["allowed"] and b["allowed"]
    assert not one.post("/v1/reservations", json=reserve_body()).json()["allowed"]
    assert not two.post("/v1/reservations", json=reserve_body()).json()["allowed"]
    assert two.get("/v1/budgets/acme").json()["reserved"] == "0.0144"
    # settle on one replica, release on the other, each once
    usage = {"usage": {"input": 1000, "output": 250}}
    assert two.post(f"/v1/reservations/{a['id']}/settle", json=usage).json()["status"] == "settled"
    assert one.post(f"/v1/reservations/{a['id']}/settle", json=usage).json()["status"] == "settled"
    assert one.delete(f"/v1/reservations/{b['id']}").status_code == 204
    s = one.get("/v1/budgets/acme").json()
    assert (s["spent"], s["reserved"]) == ("0.0048", "0.00")
    # the span is stored (twice: a retried export): both replicas count the invoice's figure
    # once. The replica that finds it counts both for that one snapshot (read before its
    # mark): too cautious for one read, never an overshoot.
    span = Call(clock.now, input=1_000_000, response_id="r-1", reservation_id=a["id"])
    insert_calls(store, [span, span])
    first = Decimal(one.get("/v1/budgets/acme").json()["spent"])
    assert first in (Decimal("2.40"), Decimal("2.4048"))
    for c in (one, two, one):
        s = c.get("/v1/budgets/acme").json()
        assert (s["spent"], s["reserved"]) == ("2.40", "0.00")
    assert two.post(f"/v1/reservations/{a['id']}/settle", json=usage).json()["status"] == "counted"
    # expiry, on the callers' clock
    one.put("/v1/budgets/acme", json={**HARD, "limit": "100"})
    one.post("/v1/reservations", json=reserve_body(ttl_seconds=60))
    assert one.get("/v1/budgets/acme").json()["reserved"] == "0.0072"
    clock.now += timedelta(seconds=60)
    assert one.get("/v1/budgets/acme").json()["reserved"] == "0.00"
    # another consumer's key cannot touch it
    assert one.post("/v1/reservations/rsv_nope/settle", json=usage).status_code == 404


def _serve(app) -> tuple[str, uvicorn.Server, threading.Thread, socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", srv, thread, sock


def test_two_replicas_four_processes_never_overshoot(store, tmp_path, redis_url):
    apps = [replica(store, tmp_path, redis_url, snapshot_seconds=1.0) for _ in range(2)]
    servers = [_serve(app) for app in apps]
    try:
        headers = {"authorization": f"Bearer {ADMIN}"}
        put = httpx.put(f"{servers[0][0]}/v1/budgets/acme", headers=headers,
                        json={**HARD, "limit": "0.0720"})  # fmt: skip
        assert put.status_code == 201
        apps[1].state.budgets.registry.put(apps[0].state.budgets.registry.all()[0])
        start = time.time() + 3
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, servers[i % 2][0], ADMIN, str(n), str(start)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, n in enumerate((13, 13, 12, 12))
        ]
        answers: list[dict] = []
        for p in procs:
            out, err = p.communicate(json.dumps(reserve_body()), timeout=120)
            assert p.returncode == 0, err
            answers += json.loads(out)
        allowed = [a for a in answers if a["allowed"]]
        assert len(answers) == 50 and len(allowed) == 10
        for url, *_ in servers:
            body = httpx.get(f"{url}/v1/budgets/acme", headers=headers).json()
            assert Decimal(body["reserved"]) == Decimal("0.0720")
    finally:
        for _, srv, thread, sock in servers:
            srv.should_exit = True
            thread.join(timeout=30)
            sock.close()


# One call whose worst case is 2**53 + 4 units of 10**-8 USD, against a limit of 2**53 + 3
# units: Lua reads the limit as the double 2**53 + 4 (ties to even), so the old script let
# the call pass the limit by one unit. Limits above what a double holds exactly are compared
# as 2**53 - 1: cautious, never over.
BIG = CONFIG_YAML.replace(
    "models:\n",
    "models:\n  - {provider: openai, model: gpt-big, per_million_tokens: "
    '{input: "0", output: "90071992.54740996"}}\n',
    1,
)


def test_a_limit_beyond_what_lua_holds_exactly_is_never_passed(store, tmp_path, redis_url):
    api = client(replica(store, tmp_path, redis_url, yaml=BIG), ADMIN)
    big = reserve_body(consumer="globex", model="gpt-big", input_tokens=0, max_tokens=1_000_000)
    assert api.put("/v1/budgets/globex", json={**HARD, "limit": "90071992.54740995"}).is_success
    answer = api.post("/v1/reservations", json=big).json()
    assert not answer["allowed"], answer
    assert api.get("/v1/budgets/globex").json()["reserved"] == "0.00"
    # the exact limit itself fits
    assert api.put("/v1/budgets/globex", json={**HARD, "limit": "90071992.54740996"}).is_success
    # ... but not in Redis mode, which holds at most 2**53 - 1 units per budget: refused
    assert not api.post("/v1/reservations", json=big).json()["allowed"]
    # a huge budget still reserves small calls exactly
    assert api.put("/v1/budgets/globex", json={**HARD, "limit": "1000000000000"}).is_success
    small = api.post("/v1/reservations", json=reserve_body(consumer="globex")).json()
    assert small["allowed"] and small["amount"] == "0.006"
    assert api.get("/v1/budgets/globex").json()["reserved"] == "0.006"
