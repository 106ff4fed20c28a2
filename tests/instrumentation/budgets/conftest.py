"""Test support for the budget guard: a real aggregator (uvicorn over a chdb store) and
the provider simulator on loopback ports, and the instrumentation with the guard on."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meterline.aggregator.app import create_app
from meterline.aggregator.budgets import BudgetService, load_budgets_config
from meterline.instrumentation import MeterlineInstrumentor, attribution
from meterline.instrumentation.budgets import _checkpoint
from meterline.instrumentation.budgets._outbox import OUTBOX
from meterline.settings import ServerSettings
from meterline.simulator import SimulatorConfig, SimulatorServer, start
from tests.aggregator._budgets import ADMIN
from tests.aggregator._tenants import ADMIN_KEYS
from tests.aggregator.pricing_config import CONFIG_YAML, write_config
from tests.conftest import migrated_store

from ..conftest import Recorded

# gpt-4o now: $2.00 / $8.00 per million (acme pays 20 % markup); gpt-4o-mini is cheaper.
PRICES = CONFIG_YAML.replace(
    "models:\n",
    "models:\n"
    "  - provider: openai\n"
    "    model: gpt-4o-mini\n"
    '    per_million_tokens: {input: "0.15", output: "0.60"}\n',
    1,
)
MILLION = Decimal(1_000_000)


def cost(model: str, input_tokens: int, output_tokens: int, markup: str = "1") -> Decimal:
    """A call's cost at today's price (gpt-4o / gpt-4o-mini / claude-sonnet-4); consumers
    other than acme (20 %) have no markup."""
    price = {
        "gpt-4o": (Decimal("2.00"), Decimal("8.00")),
        "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
        "claude-sonnet-4": (Decimal("3.00"), Decimal("15.00")),
    }[model]
    return (input_tokens * price[0] + output_tokens * price[1]) / MILLION * Decimal(markup)


class Aggregator:
    """A running aggregator: its URL and an admin client."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30
        )

    def budget(self, consumer: str, **body: Any) -> None:
        feature = body.pop("feature", None)
        body = {"unit": "USD", "period": "month", "mode": "hard", **body}
        params = {"feature": feature} if feature else None
        r = self.http.put(f"/v1/budgets/{consumer}", json=body, params=params)
        assert r.status_code in (200, 201), r.text

    def state(self, consumer: str, feature: str | None = None) -> dict[str, Any]:
        params = {"feature": feature} if feature else None
        r = self.http.get(f"/v1/budgets/{consumer}", params=params)
        assert r.status_code == 200, r.text
        return r.json()


class Counting:
    """ASGI wrapper recording each request's (method, path): what reached the aggregator."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)

    def reserves(self) -> int:
        return self.requests.count(("POST", "/v1/reservations"))


def serve(app: Any) -> tuple[str, uvicorn.Server, threading.Thread, socket.socket]:
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
    return f"http://127.0.0.1:{sock.getsockname()[1]}", srv, thread, sock


def guard_app(store: Any, tmp_path: Path, extra_yaml: str = "") -> Any:
    """The API over ``store`` with :data:`PRICES` (and ``extra_yaml``), the real clock."""
    path = write_config(tmp_path, PRICES + extra_yaml)
    settings = ServerSettings(config=path, admin_key=",".join(ADMIN_KEYS))
    app = create_app(settings, store)
    app.state.budgets = BudgetService(
        store, load_budgets_config(path, currency="USD"), currency="USD", snapshot_seconds=1.0
    )
    return app


def run_aggregator(
    store: Any, tmp_path: Path, extra_yaml: str = "", *, counting: Counting | None = None
) -> Iterator[Aggregator]:
    app = guard_app(store, tmp_path, extra_yaml)
    if counting is not None:
        counting.app = app
    url, srv, thread, sock = serve(counting or app)
    agg = Aggregator(url)
    try:
        yield agg
    finally:
        agg.http.close()
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()


def instrument_guarded(
    monkeypatch: pytest.MonkeyPatch, url: str, key: str = ADMIN, **env: str
) -> Iterator[Recorded]:
    """Instrument with ``METERLINE_BUDGETS=enforce`` against ``url``; an in-memory SDK."""
    for name in ("METERLINE_CONSUMER_ID", "METERLINE_FEATURE", "METERLINE_PROVIDER_HOSTS",
                 "METERLINE_BUDGETS_FAIL", "METERLINE_BUDGETS_TIMEOUT",
                 "METERLINE_RATE_LIMIT_WAIT", "METERLINE_BUDGETS_TTL",
                 "METERLINE_BUDGETS_LEASE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    # these tests are of the per-call path (reserve, settle); leases have their own
    # (test_leases.py), which pass METERLINE_BUDGETS_LEASE="on"
    env.setdefault("METERLINE_BUDGETS_LEASE", "off")
    monkeypatch.setenv("METERLINE_BUDGETS", "enforce")
    monkeypatch.setenv("METERLINE_API_URL", url)
    monkeypatch.setenv("METERLINE_API_KEY", key)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = MeterlineInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield Recorded(exporter, provider)
    finally:
        OUTBOX.flush(10)
        instrumentor.uninstrument()
        attribution.load_defaults()
        _checkpoint.on_budget(None)
        provider.shutdown()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    server = start(SimulatorConfig(seed=17, retry_after_ms=5))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def agg(engine_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aggregator]:
    """One aggregator per test module; tests keep apart by consumer (:func:`who`)."""
    for store in migrated_store(engine_dir, "g"):
        yield from run_aggregator(store, tmp_path_factory.mktemp("agg"))


@pytest.fixture
def who() -> str:
    """A consumer of this test alone (no plan: no markup)."""
    return f"c-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch, agg: Aggregator) -> Iterator[Recorded]:
    yield from instrument_guarded(monkeypatch, agg.url)


def settled() -> None:
    """Wait for the guard's settles and releases to be sent."""
    assert OUTBOX.flush(10), "settles still pending after 10 s"


def rate_limit(agg: Aggregator, consumer: str, **body: Any) -> None:
    r = agg.http.put(f"/v1/rate-limits/{consumer}", json={"per": "minute", **body})
    assert r.status_code in (200, 201), r.text
