"""Benchmark: what the budget guard (``METERLINE_BUDGETS=enforce``) costs an app's call,
and how many reservations per second the aggregator sustains.

One run, side by side:

- **baseline**: an openai-style chat call through httpx2 (a ``MockTransport`` answering a
  canned completion, so no provider time is counted) with meterline instrumented, guard
  off — the per-call wall time and process CPU every other figure is compared with;
- **warm cache**: the guard on, the consumer under no budget: the aggregator's answer
  (``id: null``) is cached for its ``cache_ttl_seconds``, so a call costs no round trip —
  the pre-call check's added latency and CPU (target < 100 µs);
- **round trip**: the consumer under a hard budget, leases off
  (``METERLINE_BUDGETS_LEASE=off``): every call reserves on the aggregator before it is
  sent and settles after it (the settle from the guard's background thread, whose CPU is
  counted: it is the app's process);
- **leased**: the consumer under a hard budget far from its limit, leases on (the
  default): calls are admitted from the process's lease with no round trip, their usage
  reported in batches by the background thread (counted), a new lease asked when one is
  spent or its 5 s use window ends (counted: amortised over the calls) — target < 100 µs
  added;
- **reservations/s**: ``--threads`` clients posting reserves for ``--seconds`` to the
  aggregator, against ``GET /healthz`` from the same clients (the cheapest route) in the
  same run.

The aggregator runs in its own process (uvicorn over a fresh embedded store in a
temporary directory), so its CPU is not the app's.

Wall times are the best of ``--rounds`` interleaved rounds (the machine may be loaded:
the load average is printed); CPU is what the app's process spent.

Run: ``.venv/bin/python benchmarks/budget_guard.py`` (``--calls 2000 --threads 8
--seconds 5 --rounds 3``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ADMIN = "bench-admin-key-0001"
CONFIG = """
currency: USD
models:
  - provider: openai
    model: gpt-4o
    per_million_tokens: {input: "2.50", output: "10.00"}
"""
COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "model": "gpt-4o",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}
BODY = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 50,
}


# --- the aggregator (its own process) ------------------------------------------------------


def serve(port_file: str, data_dir: str) -> None:
    import socket

    import uvicorn

    from meterline.aggregator.app import create_app
    from meterline.aggregator.budgets import BudgetService, load_budgets_config
    from meterline.settings import ServerSettings
    from meterline.store import open_store

    config = Path(data_dir) / "meterline.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    store = open_store(data_dir=Path(data_dir) / "chdb", database="bench")
    store.migrate()
    app = create_app(ServerSettings(config=config, admin_key=ADMIN), store)
    app.state.budgets = BudgetService(
        store, load_budgets_config(config, currency="USD"), currency="USD"
    )
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    Path(port_file).write_text(str(sock.getsockname()[1]))
    server.run(sockets=[sock])


def start_aggregator(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    port_file = os.path.join(tmp, "port")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", port_file, "--data-dir", tmp])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        port = Path(port_file).read_text().strip() if os.path.exists(port_file) else ""
        if port:
            url = f"http://127.0.0.1:{port}"
            try:
                request("GET", url, "/healthz")
                return proc, url
            except OSError:
                pass
        if proc.poll() is not None:
            raise SystemExit("the aggregator did not start")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the aggregator did not start within 120 s")


def request(method: str, url: str, path: str, body: Any = None, conn: Any = None) -> Any:
    own = conn is None
    if own:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    data = response.read()
    if own:
        conn.close()
    if response.status >= 300:
        raise SystemExit(f"{method} {path} answered {response.status}: {data[:200]!r}")
    return json.loads(data) if data else None


# --- the app side ----------------------------------------------------------------------------


def measure(calls: int, who: str | None) -> tuple[float, float]:
    """Per-call wall and CPU seconds of ``calls`` chat calls (``who``: the consumer)."""
    import httpx2

    from meterline.instrumentation import consumer
    from meterline.instrumentation.budgets._outbox import OUTBOX

    payload = json.dumps(COMPLETION).encode()

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=payload)

    client = httpx2.Client(transport=httpx2.MockTransport(handler))
    content = json.dumps(BODY).encode()
    url = "https://api.openai.com/v1/chat/completions"

    def one() -> None:
        client.post(url, content=content, headers={"content-type": "application/json"})

    scope = consumer(who) if who else None
    if scope is not None:
        scope.__enter__()
    try:
        for _ in range(min(200, calls)):  # warm-up: imports, caches, connections
            one()
        OUTBOX.flush(30)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            one()
        OUTBOX.flush(60)  # the settles are the app's cost too
        return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls
    finally:
        if scope is not None:
            scope.__exit__(None, None, None)
        client.close()


def check_alone(n: int) -> tuple[float, float]:
    """CPU per call of the pre-call check alone, warm cache (``_transport.admit``), against
    reading the request (``_transport.prepare``, which every metered call pays): seconds."""
    import httpx2

    from meterline.instrumentation import MeterlineInstrumentor, _transport, consumer

    meter = MeterlineInstrumentor()._meter
    lib = _transport.Library(httpx2)
    request = httpx2.Request("POST", "https://api.openai.com/v1/chat/completions", json=BODY)
    with consumer("bench-free"):
        prepared = _transport.prepare(meter, lib, request)
        assert prepared is not None and _transport.admit(meter, lib, request, prepared) is None
        assert meter.guard.cached("bench-free", None), "the answer is not cached"
        start = time.process_time()
        for _ in range(n):
            _transport.admit(meter, lib, request, prepared)
        check = (time.process_time() - start) / n
        start = time.process_time()
        for _ in range(n):
            _transport.prepare(meter, lib, request)
        read = (time.process_time() - start) / n
    return check, read


def configure(url: str | None, *, lease: bool = False) -> Any:
    from opentelemetry.sdk.trace import TracerProvider

    from meterline.instrumentation import MeterlineInstrumentor

    if url is None:
        os.environ.pop("METERLINE_BUDGETS", None)
    else:
        os.environ.update(METERLINE_BUDGETS="enforce", METERLINE_API_URL=url,
                          METERLINE_API_KEY=ADMIN,
                          METERLINE_BUDGETS_LEASE="on" if lease else "off")  # fmt: skip
    instrumentor = MeterlineInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider())
    return instrumentor


def rate(url: str, path: str, body: Any, threads: int, seconds: float) -> float:
    """Requests per second of ``threads`` keep-alive clients for ``seconds``."""
    host, port = url.removeprefix("http://").split(":")
    counts = [0] * threads
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(threads)

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        barrier.wait()
        while time.monotonic() < stop:
            request("POST" if body is not None else "GET", url, path, body, conn)
            counts[i] += 1
        conn.close()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.data_dir)
        return
    with tempfile.TemporaryDirectory(prefix="meterline-bench-") as tmp:
        proc, url = start_aggregator(tmp)
        try:
            request("PUT", url, "/v1/budgets/bench-hard", {"limit": "1000000.00", "unit": "USD",
                    "period": "month", "mode": "hard"})  # fmt: skip
            request("PUT", url, "/v1/budgets/bench-lease", {"limit": "1000000.00", "unit": "USD",
                    "period": "month", "mode": "hard"})  # fmt: skip
            base, warm, trip, alone, leased = [], [], [], [], []
            for _ in range(args.rounds):  # interleaved; the best of each (a loaded machine)
                inst = configure(None)
                base.append(measure(args.calls, "bench-free"))
                inst.uninstrument()
                inst = configure(url)
                warm.append(measure(args.calls, "bench-free"))
                alone.append(check_alone(args.calls * 50))
                trip.append(measure(max(1, args.calls // 4), "bench-hard"))
                inst.uninstrument()
                inst = configure(url, lease=True)
                leased.append(measure(args.calls, "bench-lease"))
                inst.uninstrument()
            best = [
                (min(w for w, _ in runs), min(c for _, c in runs))
                for runs in (base, warm, trip, leased)
            ]
            (base_wall, base_cpu), (warm_wall, warm_cpu), (trip_wall, trip_cpu) = best[:3]
            lease_wall, lease_cpu = best[3]
            reserve = {"consumer": "bench-hard", "feature": None, "provider": "openai",
                       "model": "gpt-4o", "input_tokens": 12, "max_tokens": 1}  # fmt: skip
            health = rate(url, "/healthz", None, args.threads, args.seconds)
            reserves = rate(url, "/v1/reservations", reserve, args.threads, args.seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    us = 1e6
    print(f"calls: {args.calls} (round trip: {max(1, args.calls // 4)}) x {args.rounds} rounds "
          f"(best of each), clients: {args.threads} threads x {args.seconds:g} s, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'':34} {'wall/call':>11} {'CPU/call':>11} {'added wall':>11} {'added CPU':>11}")
    print(f"{'baseline (meterline, guard off)':34} {base_wall * us:9.1f}µs {base_cpu * us:9.1f}µs")
    rows = (("guard, warm cache (no budget)", warm_wall, warm_cpu),
            ("guard, round trip (reserve+settle)", trip_wall, trip_cpu),
            ("guard, leased (hard budget)", lease_wall, lease_cpu))  # fmt: skip
    for name, wall, cpu in rows:
        print(
            f"{name:34} {wall * us:9.1f}µs {cpu * us:9.1f}µs "
            f"{(wall - base_wall) * us:9.1f}µs {(cpu - base_cpu) * us:9.1f}µs"
            f"   ({wall / base_wall:.2f}x wall, {cpu / base_cpu:.2f}x CPU of the baseline)"
        )
    check_cpu, read_cpu = (min(a[0] for a in alone), min(a[1] for a in alone))
    print(
        f"pre-call check alone (warm cache): {check_cpu * us:.2f} µs CPU per call "
        f"({check_cpu / read_cpu:.2f}x of reading the request, {read_cpu * us:.2f} µs)"
    )
    added = max(warm_wall - base_wall, 0.0) * us
    added_cpu = max(warm_cpu - base_cpu, 0.0) * us
    verdict = "within" if check_cpu * us < 100 and added < 100 else "OVER"
    print(f"warm-cache call: {added:.1f} µs wall, {added_cpu:.1f} µs CPU added per call "
          f"({verdict} the 100 µs target)")  # fmt: skip
    lease_added = max(lease_wall - base_wall, 0.0) * us
    lease_cpu_added = max(lease_cpu - base_cpu, 0.0) * us
    verdict = "within" if lease_added < 100 and lease_cpu_added < 100 else "OVER"
    trip_added, trip_cpu_added = (trip_wall - base_wall) * us, (trip_cpu - base_cpu) * us
    print(f"leased call under a hard budget: {lease_added:.1f} µs wall, {lease_cpu_added:.1f} µs "
          f"CPU added per call ({verdict} the 100 µs target) vs the round trip's "
          f"{trip_added:.1f} µs wall, {trip_cpu_added:.1f} µs CPU")  # fmt: skip
    print(f"aggregator: {reserves:.0f} reservations/s vs {health:.0f} GET /healthz/s "
          f"({reserves / health:.2f}x), {args.threads} clients")  # fmt: skip


if __name__ == "__main__":
    main()
