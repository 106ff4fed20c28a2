"""Benchmark: meter events per second from ``meterline stripe sync`` to the stand-in, over
v1 and over v2 streams, and the sync's own CPU per event.

In one run: the stand-in runs in its own process (so its CPU is not counted); usage for
``--consumers`` consumers × ``--hours`` closed hours × 3 meters is stored and rated
first (not timed); then, each on a fresh ledger, the sync over v1 and over v2 is timed
(wall and this process's CPU: planning, the ledger's writes, the SDK). The baseline,
measured in the same run, is the bare SDK sending the same events with no ledger (v1:
one call after another; v2: 100 per stream request): the ratio is what exactly-once costs.

Run: ``.venv/bin/python benchmarks/stripe_sync.py --consumers 5 --hours 200``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meterline.aggregator.invoices import load_store_pricing
from meterline.aggregator.rated import ensure_rated
from meterline.aggregator.stripe import (
    MeterEventsClient,
    StripeEnv,
    load_stripe_config,
    run_sync,
)
from meterline.store import open_store

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.aggregator._calls import Call, insert_calls  # noqa: E402

CONFIG = """
models:
  - provider: openai
    model: gpt-4o
    per_million_tokens: {input: "2.50", cache_read: "1.25", output: "10.00"}
stripe:
  customers: {CUSTOMERS}
  meters:
    - {event_name: llm_input_tokens, value: tokens, token_types: [input, cache_read]}
    - {event_name: llm_output_tokens, value: tokens, token_types: [output]}
    - {event_name: llm_cost, value: cost, unit: "0.000001"}
"""
METERS = ("llm_input_tokens", "llm_output_tokens", "llm_cost")


def _standin(consumers: int) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "meterline", "stripe-standin", "--port", str(port)]
    for c in range(consumers):
        args += ["--customer", f"cus_c{c}"]
    for m in METERS:
        args += ["--meter", m]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(base + "/_standin/health", timeout=1)
            return proc, base
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the stand-in did not start")


def _reset(base: str) -> None:
    urllib.request.urlopen(urllib.request.Request(base + "/_standin/reset", method="POST"))


def _sync(store, config, pricing, client, api: str) -> tuple[int, float, float]:  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    summary = run_sync(store, config, pricing=pricing, client=client, api=api)
    return summary.sent, time.perf_counter() - wall, time.process_time() - cpu


def _bare(client: MeterEventsClient, events: list[dict], api: str) -> tuple[float, float]:  # type: ignore[type-arg]
    sdk = client.client
    wall, cpu = time.perf_counter(), time.process_time()
    if api == "v1":
        for e in events:
            sdk.v1.billing.meter_events.create(e)  # type: ignore[arg-type]
    else:
        token = sdk.v2.billing.meter_event_session.create().authentication_token
        for i in range(0, len(events), 100):
            batch = [{**e, "timestamp": datetime.fromtimestamp(e["timestamp"], UTC).isoformat()}
                     for e in events[i : i + 100]]  # fmt: skip
            sdk.v2.billing.meter_event_stream.create({"events": batch}, {"api_key": token})
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consumers", type=int, default=5)
    parser.add_argument("--hours", type=int, default=200)
    args = parser.parse_args()
    proc, base = _standin(args.consumers)
    tmp = Path(tempfile.mkdtemp(prefix="ml-stripe-bench-"))
    try:
        customers = ", ".join(f"c{c}: cus_c{c}" for c in range(args.consumers))
        path = tmp / "meterline.yaml"
        path.write_text(CONFIG.replace("{CUSTOMERS}", "{" + customers + "}"))
        config = load_stripe_config(path)
        assert config is not None
        env = StripeEnv(api_key="sk_test_standin", api_base=base, meter_events_base=base)
        client = MeterEventsClient(env)
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        calls = [Call(at=now - timedelta(hours=h + 2, minutes=-5), consumer=f"c{c}",
                      input=1000 + h, output=h + 1, cache_read=h)
                 for h in range(args.hours) for c in range(args.consumers)]  # fmt: skip
        results = {}
        events: list[dict] = []  # type: ignore[type-arg]
        for api in ("v1", "v2"):
            store = open_store(data_dir=tmp / "chdb", database=f"bench_{api}")
            store.migrate()
            insert_calls(store, calls)
            pricing = load_store_pricing(store, path)
            ensure_rated(store, pricing)
            _reset(base)
            results[api] = _sync(store, config, pricing, client, api)
            if not events:
                state = json.loads(urllib.request.urlopen(base + "/_standin/state").read())
                events = [
                    {"event_name": e["event_name"], "payload": e["payload"],
                     "timestamp": e["timestamp"], "identifier": "bare-" + e["identifier"]}
                    for e in state["meter_events"]
                ]  # fmt: skip
            store.close()
        bare = {}
        for api in ("v1", "v2"):
            _reset(base)
            bare[api] = _bare(client, events, api)
        print(f"{len(events)} meter events ({args.consumers} consumers × {args.hours} hours × 3 "
              f"meters); stand-in in its own process; {os.cpu_count()} cores")  # fmt: skip
        for api in ("v1", "v2"):
            sent, wall, cpu = results[api]
            bwall, bcpu = bare[api]
            rate, bare_rate = sent / wall, len(events) / bwall
            per, bare_per = cpu / sent * 1e6, bcpu / len(events) * 1e6
            print(f"  {api} sync: {rate:8.0f} events/s, CPU {per:6.0f} µs/event | bare SDK: "
                  f"{bare_rate:8.0f} events/s, CPU {bare_per:6.0f} µs/event | sync/bare: "
                  f"rate {rate / bare_rate:.2f}x, CPU {per / bare_per:.2f}x")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
