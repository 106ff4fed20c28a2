"""When the aggregator cannot answer usefully — unreachable, slow, 5xx, 4xx, garbage, a
dropped connection — the guard fails open (the call goes, one warning a minute) or,
with ``METERLINE_BUDGETS_FAIL=closed``, raises ``meterline.BudgetExceeded`` with the
reason. Never anything else, and never a broken call.

The misbehaving aggregator is a local stand-in (:class:`BadAggregator`): a real one does
not answer garbage. It covers only the reservation routes' failure modes, nothing of
budgets themselves (the other modules use the real aggregator)."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import meterline
from meterline.instrumentation import MeterlineInstrumentor, consumer
from meterline.instrumentation.budgets import _guard

from ._calls import call
from .conftest import instrument_guarded, settled

GUARD_LOGGER = "meterline.instrumentation.budgets._guard"


class BadAggregator:
    """Answers every reservation route the way ``mode`` says; counts the requests."""

    def __init__(self) -> None:
        self.mode = "500"
        self.settle_mode = "ok"
        self.script: list[bytes] = []
        """The answers of mode ``script``, one per reserve (the last one repeats)."""
        self.requests: list[tuple[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_DELETE(self) -> None:
                owner.requests.append(("DELETE", self.path))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                owner.requests.append(("POST", self.path))
                mode = owner.settle_mode if self.path.endswith("/settle") else owner.mode
                if mode == "ok":
                    return self._answer(200, json.dumps(ALLOWED).encode())
                if mode == "script":
                    body = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                    return self._answer(200, body)
                if mode == "reset":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if mode == "slow":
                    time.sleep(1.0)
                    return self._answer(200, json.dumps(ALLOWED).encode())
                status, body = MODES[mode]
                return self._answer(status, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


ALLOWED = {"allowed": True, "id": "rsv_standin", "amount": "0.01", "unit": "USD",
           "expires_at": "2026-12-02T00:05:00Z", "budgets": [{"mode": "hard"}],
           "cache_ttl_seconds": 5, "headroom": "1.00"}  # fmt: skip
MODES: dict[str, tuple[int, bytes]] = {
    "500": (500, b'{"detail": "Internal Server Error"}'),
    "503": (503, b'{"detail": "the reservation store (Redis) is unreachable"}'),
    "401": (401, b'{"detail": "invalid API key"}'),
    "422": (422, b'{"detail": "max_tokens is required for openai/gpt-4o"}'),
    "html": (200, b"<html>a proxy's login page</html>"),
    "array": (200, b"[1, 2, 3]"),
    "allowed-yes": (200, b'{"allowed": "yes"}'),
    "id-number": (200, b'{"allowed": true, "id": 5}'),
    "no-allowed": (200, b'{"id": "rsv_x"}'),
    "retry-after-nan": (200, b'{"allowed": false, "policy": "rate_limited", "retry_after": "nan"}'),
    "truncated": (200, b'{"allowed": tr'),
}
BAD = [*MODES, "slow", "reset", "unreachable"]


@pytest.fixture(scope="module")
def bad() -> Iterator[BadAggregator]:
    server = BadAggregator()
    try:
        yield server
    finally:
        server.close()


def closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def _setup(monkeypatch, bad: BadAggregator, mode: str, **env: str) -> Iterator[Any]:
    bad.mode = mode
    bad.settle_mode = "ok"
    url = closed_port() if mode == "unreachable" else bad.url
    return instrument_guarded(monkeypatch, url, METERLINE_BUDGETS_TIMEOUT="0.3", **env)


@pytest.mark.parametrize("mode", BAD)
@pytest.mark.parametrize(("sdk", "how", "stream"),
                         [("openai", "sync", False), ("anthropic", "async", True)])  # fmt: skip
def test_fail_open_lets_the_call_go(sim, bad, monkeypatch, caplog, mode, sdk, how, stream):
    for recorded in _setup(monkeypatch, bad, mode):
        with caplog.at_level(logging.WARNING, logger=GUARD_LOGGER), consumer("acme"):
            used_in, used_out = call(sim, sdk, how, stream)
        assert used_in > 0 and used_out > 0
        spans = recorded.spans()
        assert len(spans) == 1 and "meterline.budget.reservation_id" not in spans[0].attributes
        warnings = [r for r in caplog.records if r.name == GUARD_LOGGER]
        assert len(warnings) == 1 and "fail open" in warnings[0].getMessage()


@pytest.mark.parametrize("mode", BAD)
def test_fail_closed_raises_budget_exceeded_with_the_reason(sim, bad, monkeypatch, mode):
    for recorded in _setup(monkeypatch, bad, mode, METERLINE_BUDGETS_FAIL="closed"):
        before = len(sim.ledger.entries())
        with consumer("acme"), pytest.raises(meterline.BudgetExceeded) as info:
            call(sim, "anthropic", "sync", False)
        assert "METERLINE_BUDGETS_FAIL=closed" in info.value.reason
        assert info.value.policy == "fail_closed" and info.value.consumer == "acme"
        assert len(sim.ledger.entries()) == before
        assert recorded.spans() == []


def test_fail_open_warns_once_a_minute(sim, bad, monkeypatch, caplog):
    for _recorded in _setup(monkeypatch, bad, "unreachable"):
        guard = MeterlineInstrumentor()._meter.guard
        with caplog.at_level(logging.WARNING, logger=GUARD_LOGGER), consumer("acme"):
            for _ in range(3):
                call(sim, "openai", "sync", False)
            assert len([r for r in caplog.records if r.name == GUARD_LOGGER]) == 1
            guard._warned_at -= 61  # a minute later
            call(sim, "openai", "sync", True)
            call(sim, "openai", "async", False)
        assert len([r for r in caplog.records if r.name == GUARD_LOGGER]) == 2


@pytest.mark.parametrize("mode", ["slow", "unreachable", "reset"])
def test_an_aggregator_that_does_not_answer_is_not_waited_for_on_every_call(
    sim, bad, monkeypatch, mode
):
    for recorded in _setup(monkeypatch, bad, mode):
        bad.requests.clear()
        with consumer("acme"):
            for _ in range(3):
                call(sim, "openai", "sync", False)
        assert len(recorded.spans()) == 3
        if mode != "unreachable":  # a reset is tried once more on a new connection
            reserves = [r for r in bad.requests if r == ("POST", "/v1/reservations")]
            assert len(reserves) == (2 if mode == "reset" else 1)
        guard = MeterlineInstrumentor()._meter.guard
        assert guard._down_until > time.monotonic() + _guard.DOWN_SECONDS - 5


@pytest.mark.parametrize("mode", ["500", "html", "422"])
def test_an_aggregator_that_answers_badly_is_asked_each_time(sim, bad, monkeypatch, mode):
    for _recorded in _setup(monkeypatch, bad, mode):
        bad.requests.clear()
        with consumer("acme"):
            for _ in range(3):
                call(sim, "openai", "sync", False)
        assert len([r for r in bad.requests if r == ("POST", "/v1/reservations")]) == 3


@pytest.mark.parametrize("mode", ["500", "reset", "slow", "html"])
def test_a_failing_settle_never_touches_the_call(sim, bad, monkeypatch, mode):
    for recorded in _setup(monkeypatch, bad, "ok"):
        bad.settle_mode = mode
        with consumer("acme"):
            used_in, _ = call(sim, "openai", "sync", True)
        settled()
        assert used_in > 0
        (span,) = recorded.spans()
        assert span.attributes["meterline.budget.reservation_id"] == "rsv_standin"
        assert ("POST", "/v1/reservations/rsv_standin/settle") in bad.requests


def test_a_bug_in_the_guard_fails_open_not_into_the_app(sim, bad, monkeypatch):
    def broken(self, ask):
        raise RuntimeError("a bug")

    monkeypatch.setattr(_guard.Guard, "_reserve_body", broken)
    for recorded in _setup(monkeypatch, bad, "ok"):
        with consumer("acme"):
            call(sim, "openai", "async", True)
        assert len(recorded.spans()) == 1


def test_bad_settings_warn_and_fall_back(monkeypatch, caplog):
    env = {"METERLINE_BUDGETS": "enforce", "METERLINE_API_URL": "http://127.0.0.1:9",
           "METERLINE_BUDGETS_FAIL": "sometimes", "METERLINE_BUDGETS_TIMEOUT": "-1",
           "METERLINE_RATE_LIMIT_WAIT": "soon"}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger=GUARD_LOGGER):
        config = _guard.GuardConfig.from_env(env)
    assert config is not None and not config.fail_closed
    assert config.timeout == _guard.DEFAULT_TIMEOUT and config.rate_limit_wait == 0.0
    assert len(caplog.records) == 3
    assert _guard.GuardConfig.from_env({"METERLINE_BUDGETS": "enforce"}) is None  # no URL
    assert _guard.GuardConfig.from_env({"METERLINE_BUDGETS": "off"}) is None
    assert _guard.GuardConfig.from_env({}) is None
