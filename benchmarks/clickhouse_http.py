"""Benchmark: what the read-only :8123 pipeline costs per request.

For a few statements Grafana's plugin sends (its hello, a panel query, ``DESC TABLE``),
times in the same run:

- ``endpoint``: a POST to the read-only endpoint (HTTP, limits, ``readonly = 1``, the
  engine's parse and ``_policy`` check, the query, Native re-framing);
- ``plan``: the parse-and-check step alone (``ChdbEngine.plan`` on an open session);
- ``baseline``: the statement on a fresh chdb session without HTTP or checks (connect,
  ``USE``, query) — the floor any per-request-session design pays.

Prints the median and p90 of each and the endpoint's ratio to the baseline.

Run: ``.venv/bin/python benchmarks/clickhouse_http.py --requests 200``
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

import httpx
import uvicorn

from meterline.clickhouse_http import create_app
from meterline.clickhouse_http._engine import ChdbEngine
from meterline.store import open_store

NATIVE = {"default_format": "Native", "client_protocol_version": "54460"}
STATEMENTS = {
    "hello": "SELECT displayName(), version(), revision(), timezone()",
    "panel": (
        "SELECT toStartOfInterval(toDateTime(Timestamp), INTERVAL 3600 second) AS time, "
        "ConsumerId AS consumer, sum(InputTokens + OutputTokens) AS tokens FROM llm_usage "
        "WHERE Timestamp >= toDateTime(1700000000) AND Timestamp <= toDateTime(1900000000) "
        "GROUP BY time, consumer ORDER BY time"
    ),
    "describe": 'DESC TABLE "meterline"."llm_usage"',
}


def _times(run: Callable[[], object], n: int) -> list[float]:
    for _ in range(5):
        run()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        run()
        out.append(time.perf_counter() - started)
    return out


def _line(name: str, what: str, times: list[float], base: list[float] | None = None) -> str:
    median = statistics.median(times) * 1000
    p90 = sorted(times)[int(len(times) * 0.9)] * 1000
    ratio = f"  x{median / (statistics.median(base) * 1000):.2f} of baseline" if base else ""
    return f"{name:9} {what:9} median {median:7.2f} ms  p90 {p90:7.2f} ms{ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="meterline-bench-chhttp-")
    try:
        store = open_store(data_dir=data, database="meterline")
        store.migrate()
        app = create_app(store, password=None)
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as meterline serve does
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        engine = ChdbEngine(data)
        engine.load_policy()
        with httpx.Client() as client:
            for name, sql in STATEMENTS.items():

                def baseline(sql: str = sql) -> object:
                    conn = engine._connect()
                    try:
                        conn.query("USE meterline", "TabSeparated")
                        return conn.query(sql, "Native").bytes()
                    finally:
                        conn.close()

                conn = engine._connect()
                try:
                    plan = _times(lambda c=conn, s=sql: engine.plan(c, s, {}), args.requests)
                finally:
                    conn.close()
                base = _times(baseline, args.requests)
                endpoint = _times(
                    lambda sql=sql: client.post(url, content=sql, params=NATIVE).raise_for_status(),
                    args.requests,
                )
                print(_line(name, "baseline", base))
                print(_line(name, "plan", plan))
                print(_line(name, "endpoint", endpoint, base))
        server.should_exit = True
        store.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
