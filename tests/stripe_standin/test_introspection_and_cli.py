"""State over HTTP, the public API, and ``meterline stripe-standin``."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import httpx

import meterline.stripe_standin as standin_pkg
from tests.stripe_standin.conftest import client_for, event


def test_public_api():
    assert sorted(standin_pkg.__all__) == sorted(
        [
            "FAULT_KINDS",
            "Adjustment",
            "Clock",
            "ErrorReport",
            "Fault",
            "MeterEvent",
            "Standin",
            "StandinConfig",
            "StandinServer",
            "create_app",
            "serve",
            "start",
        ]
    )


def test_state_clock_and_faults_over_http(fake, client):
    client.v1.billing.meter_events.create(event("5", identifier="w1"))
    state = httpx.get(fake.api_base + "/_standin/state").json()
    assert state["totals"] == [
        {"customer": "cus_acme", "event_name": "llm_input_tokens", "value": 5}
    ]
    assert state["meter_events"][0]["identifier"] == "w1"
    moved = httpx.post(fake.api_base + "/_standin/clock", json={"now": 1_900_000_000}).json()
    assert abs(moved["now"] - 1_900_000_000) < 5
    assert abs(fake.state.clock.now() - 1_900_000_000) < 5
    fault = httpx.post(fake.api_base + "/_standin/faults", json={"kind": "rate_limit", "times": 2})
    assert fault.status_code == 200
    assert len(fake.state.faults.pending()) == 1
    refused = httpx.post(fake.api_base + "/_standin/faults", json={"kind": "nope"})
    assert refused.status_code == 400
    httpx.post(fake.api_base + "/_standin/reset")
    assert fake.state.events() == []
    assert sorted(fake.state.customers) == ["cus_acme", "cus_globex"]  # configured ones stay


def test_the_cli_serves_a_standin_the_sdk_reaches():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meterline",
            "stripe-standin",
            "--port",
            "0",
            "--customer",
            "cus_cli",
            "--meter",
            "tokens",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.rsplit(" ", 1)[-1].strip()

        server = SimpleNamespace(
            api_key="sk_test_standin", base_addresses={"api": url, "meter_events": url}
        )

        for _ in range(100):
            try:
                httpx.get(url + "/_standin/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        client = client_for(server)
        client.v1.billing.meter_events.create(
            {"event_name": "tokens", "payload": {"stripe_customer_id": "cus_cli", "value": "9"}}
        )
        state = httpx.get(url + "/_standin/state").json()
        assert state["totals"] == [{"customer": "cus_cli", "event_name": "tokens", "value": 9}]
    finally:
        process.terminate()
        process.wait(10)


def test_answers_go_out_without_waiting_for_the_clients_delayed_ack(fake):
    """TCP_NODELAY on accepted connections; without it every answer took ~40 ms (Nagle)."""
    import socket

    with httpx.Client() as http:
        http.get(fake.api_base + "/_standin/health")
        connections = list(fake._server.server_state.connections)
        assert connections
        for connection in connections:
            sock = connection.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
