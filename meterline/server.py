"""``meterline serve``: collector, aggregator and ClickHouse-HTTP in one process.

One asyncio loop hosts every listener (chdb allows one process per data
directory, so in embedded mode they must share the process):

- OTLP/HTTP (bare ASGI app under uvicorn) and OTLP/gRPC (grpc.aio),
- the aggregator API (FastAPI under uvicorn),
- the ClickHouse-compatible HTTP endpoint for Grafana and tools.

Shutdown (SIGTERM/SIGINT) is ordered so nothing acknowledged is lost: the OTLP
listeners stop taking requests and finish the ones in flight (their acks wait
for the writer), the writer writes everything queued, the background loops stop
(the Stripe sync of ``stripe.sync_interval`` after its run in progress, bounded;
the rating loop; the alert thread after its webhook attempt in progress, bounded), then
the API and the store close.

On the embedded store, start first recovers from a killed run: it removes the
temporary files left under ``<data dir>/meterline-tmp`` (where this process keeps all
of its temporary files) and re-derives the usage of the inserts that were in flight
(:mod:`meterline.store.reconcile`); while running, the ingest checkpoint advances.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from meterline.config import ConfigFile
from meterline.errors import MeterlineError
from meterline.settings import ServerSettings
from meterline.store import Store, open_store
from meterline.store.reconcile import Checkpointer, reconcile_at_start

logger = logging.getLogger(__name__)


class ServeRefused(MeterlineError):
    """The configuration is unsafe to serve as it is (the message says what to do)."""


def open_configured_store(settings: ServerSettings) -> Store:
    """The store the settings name: a ClickHouse server if a URL is set, else chdb."""
    if settings.clickhouse_url:
        return open_store(clickhouse_url=settings.clickhouse_url, database=settings.database)
    return open_store(data_dir=settings.data_dir, database=settings.database)


@dataclass
class _UvicornListener:
    name: str
    server: uvicorn.Server
    sock: socket.socket
    task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.server.config
        if not config.loaded:
            config.load()
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup(sockets=[self.sock])
        self.task = asyncio.create_task(self.server.main_loop())

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task
        await self.server.shutdown(sockets=[self.sock])


def _uvicorn(name: str, app: Any, sock: socket.socket) -> _UvicornListener:
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=30
    )
    return _UvicornListener(name, uvicorn.Server(config), sock)


@dataclass
class Endpoints:
    """Where each listener is; written to ``--ready-file`` as JSON."""

    host: str
    otlp_http_port: int
    otlp_grpc_port: int
    api_port: int
    clickhouse_http_port: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    def urls(self) -> dict[str, str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        urls = {
            "otlp_http": f"http://{host}:{self.otlp_http_port}/v1/traces",
            "otlp_grpc": f"{host}:{self.otlp_grpc_port}",
            "api": f"http://{host}:{self.api_port}",
        }
        if self.clickhouse_http_port is not None:
            urls["clickhouse_http"] = f"http://{host}:{self.clickhouse_http_port}"
        return urls


@dataclass
class _Bound:
    """Every listener's socket, bound before the store is opened."""

    otlp_http: socket.socket
    grpc: Any  # grpc.aio.Server, bound, not started
    grpc_port: int
    api: socket.socket
    clickhouse_http: socket.socket | None

    async def close(self) -> None:
        for sock in (self.otlp_http, self.api, self.clickhouse_http):
            if sock is not None:
                sock.close()
        await self.grpc.stop(None)


def _bind_all(settings: ServerSettings) -> _Bound:
    """Bind every port first: a taken one is a one-line error and nothing was started.

    Raises:
        ListenError: naming the flag; the sockets bound before it are closed.
    """
    from meterline.collector.otlp_grpc import bind_server
    from meterline.listen import bind

    host = settings.host
    embedded = not settings.clickhouse_url
    opened: list[socket.socket] = []
    try:
        opened.append(bind(host, settings.otlp_http_port, flag="--otlp-http-port"))
        opened.append(bind(host, settings.api_port, flag="--api-port"))
        if embedded:
            opened.append(bind(host, settings.clickhouse_http_port, flag="--clickhouse-http-port"))
        grpc_server, grpc_port = bind_server(host, settings.otlp_grpc_port)
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return _Bound(
        otlp_http=opened[0],
        grpc=grpc_server,
        grpc_port=grpc_port,
        api=opened[1],
        clickhouse_http=opened[2] if embedded else None,
    )


async def serve(
    settings: ServerSettings,
    *,
    config: ConfigFile | None = None,
    ready_file: Path | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run every listener until SIGTERM/SIGINT (or ``stop`` is set); SIGHUP reloads the
    configuration file.

    Start-up checks come before anything is created: the configuration file (``config``
    when the caller already read it), the data directory, then every port.

    Raises:
        ServeRefused: serving as configured is unsafe (an open API off loopback).
        ConfigError: the configuration file is invalid.
        DataDirError: the data directory is unusable or another process holds it.
        ListenError: a port cannot be bound.
    """
    from meterline.aggregator.auth import open_api_refusal
    from meterline.config import load_config
    from meterline.store.datadir import check_data_dir

    refusal = open_api_refusal(settings)
    if refusal is not None:
        raise ServeRefused(refusal)
    if config is None:
        config = load_config(settings.config)
    if not settings.clickhouse_url:
        check_data_dir(settings.data_dir)
    bound = _bind_all(settings)
    try:
        store = open_configured_store(settings)
    except BaseException:
        await bound.close()
        raise
    try:
        await _run(settings, config, store, bound, ready_file=ready_file, stop=stop)
    finally:
        store.close()


async def _run(
    settings: ServerSettings,
    config: ConfigFile,
    store: Store,
    bound: _Bound,
    *,
    ready_file: Path | None,
    stop: asyncio.Event | None,
) -> None:
    from meterline.aggregator.app import create_app, reload_config
    from meterline.aggregator.auth import OPEN_WARNING
    from meterline.collector.budget import BodyBudget
    from meterline.collector.otlp_grpc import add_trace_service
    from meterline.collector.otlp_http import OTLPHTTPApp
    from meterline.collector.stats import IngestStats
    from meterline.collector.writer import Writer

    try:
        applied = store.migrate()
        if applied:
            logger.info("migrations applied: %s", applied)
        if store.kind == "chdb":
            _recover_embedded(store)
        if settings.fsync:
            for table in ("otel_traces", "llm_usage"):
                store.command(f"ALTER TABLE {{db}}.{table} MODIFY SETTING fsync_after_insert = 1")
    except BaseException:
        await bound.close()
        raise

    writer = Writer(
        store,
        max_pending=settings.max_pending_spans,
        batch_max=settings.batch_max_spans,
        native=settings.native_ingest and store.kind == "chdb",
        linger=settings.writer_linger_ms / 1000,
        batch_min=settings.writer_batch_min_spans,
        threads=settings.writer_threads,
    )
    checkpointer = Checkpointer(store, writer.safe_time) if store.kind == "chdb" else None
    ingest_stats = (
        IngestStats(store, writer, interval=settings.ingest_stats_interval_s).start()
        if settings.ingest_stats_interval_s
        else None
    )
    listening = False
    host = settings.host

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    bodies = BodyBudget()  # bytes being read by both receivers at once
    otlp = _uvicorn(
        "otlp-http",
        OTLPHTTPApp(
            writer, token=settings.ingest_token, keep_all=settings.keep_all_spans, budget=bodies
        ),
        bound.otlp_http,
    )
    grpc_server, grpc_port = bound.grpc, bound.grpc_port
    add_trace_service(
        grpc_server,
        writer,
        token=settings.ingest_token,
        keep_all=settings.keep_all_spans,
        budget=bodies,
    )
    address = (host, bound.api.getsockname()[1])
    api_app = create_app(settings, store, config=config, ready=lambda: listening, address=address)
    api = _uvicorn("api", api_app, bound.api)
    listeners = [otlp, api]
    ch_http = _clickhouse_http(settings, store, bound.clickhouse_http)
    if ch_http is not None:
        listeners.append(ch_http)
    if settings.config is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, reload_config, api_app)

    await grpc_server.start()
    for listener in listeners:
        await listener.start()
    listening = True
    own_ports = {otlp.sock.getsockname()[1], grpc_port, api.sock.getsockname()[1]}
    if ch_http is not None:
        own_ports.add(ch_http.sock.getsockname()[1])
    alert_loop = _alert_loop(config, store, api_app, own_ports)
    rating = _rating_loop(settings, store, api_app, on_rated=alert_loop.poke)
    stripe_sync = _stripe_loop(config, store, api_app)
    endpoints = Endpoints(
        host=host,
        otlp_http_port=otlp.sock.getsockname()[1],
        otlp_grpc_port=grpc_port,
        api_port=api.sock.getsockname()[1],
        clickhouse_http_port=ch_http.sock.getsockname()[1] if ch_http else None,
        extra={"pid": os.getpid(), "store": repr(store)},
    )
    for name, url in endpoints.urls().items():
        logger.info("%s listening on %s", name, url)
    if not settings.admin_keys:
        logger.warning(OPEN_WARNING)
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**endpoints.__dict__, "urls": endpoints.urls()}))
        tmp.replace(ready_file)

    await stop.wait()
    logger.info("shutting down: finishing OTLP requests in flight")
    listening = False
    await asyncio.gather(otlp.stop(), grpc_server.stop(grace=30))
    await asyncio.to_thread(writer.close)
    if ingest_stats is not None:
        await asyncio.to_thread(ingest_stats.stop)
    stopped = stripe_sync is None or await asyncio.to_thread(
        stripe_sync.stop, STRIPE_STOP_TIMEOUT_S
    )
    if not stopped:
        logger.warning("stopping with a Stripe sync run still going: the next run settles it")
    if rating is not None:
        await asyncio.to_thread(rating.stop)
    if not await asyncio.to_thread(alert_loop.stop, ALERTS_STOP_TIMEOUT_S):
        logger.warning("stopping with an alert delivery in flight: the next start resends it")
    if checkpointer is not None:
        checkpointer.stop()
    logger.info("all acknowledged spans written (%d in this run)", writer.written)
    for listener in listeners[1:]:
        await listener.stop()


def _rating_loop(settings: ServerSettings, store: Store, app: Any, *, on_rated: Any = None) -> Any:
    """Start the loop that keeps ``rated_usage`` current (``None``: turned off)."""
    if not settings.rating_interval_s:
        return None
    from meterline.aggregator.rated import RatingLoop
    from meterline.aggregator.routes._pricing import app_pricing

    loop = RatingLoop(
        store, lambda: app_pricing(app), interval=settings.rating_interval_s, on_rated=on_rated
    )
    loop.start()
    return loop


ALERTS_STOP_TIMEOUT_S = 15.0
"""How long shutdown waits for the alert thread (a webhook attempt times out after 10 s;
one cut short stays pending and is sent again, under the same delivery id, at the next
start)."""


def _alert_loop(config: ConfigFile, store: Store, app: Any, own_ports: set[int]) -> Any:
    """Start the alert thread: checks budgets and rolling rules after each rating run,
    each settle and every ``alerts.check_interval``; delivers the webhook outbox (never
    to a URL that points at one of ``own_ports`` on this machine: warned here, each such
    delivery marked failed)."""
    from meterline.aggregator.alerts import AlertLoop, AlertService
    from meterline.aggregator.routes._budgets import app_budgets
    from meterline.aggregator.routes._pricing import app_pricing

    service = AlertService(
        store,
        config.alerts,
        pricing=lambda: app_pricing(app),
        budgets=lambda: app_budgets(app),
        currency=config.currency,
        current=lambda: app.state.config.alerts,
    )
    service.own_ports = frozenset(own_ports)
    for hook in config.alerts.webhooks:
        port = service._own_port(hook.url)
        if port is not None:
            logger.warning(
                "alerts: webhook %s points at this aggregator's own listener on port %d: "
                "its deliveries are refused (point it at the receiver)",
                hook.url,
                port,
            )
    loop = AlertLoop(service)
    app.state.alert_loop = loop
    loop.start()
    return loop


STRIPE_STOP_TIMEOUT_S = 30.0
"""How long shutdown waits for a Stripe sync run in progress. On SIGTERM the run sends
nothing more and ends its retries; a request in flight ends within the client's timeout
(20 s), so the run normally ends and writes its answers. Abandoning one is safe anyway:
its rows stay pending or unknown in the ledger, settled first by the next run."""


def _stripe_loop(config: ConfigFile, store: Store, app: Any) -> Any:
    """Start ``stripe.sync_interval``'s loop (``None``: not configured)."""
    section = config.stripe.export()
    if section is None or section.sync_interval is None:
        return None
    from meterline.aggregator.routes._pricing import app_pricing
    from meterline.aggregator.stripe import SyncLoop

    loop = SyncLoop(
        store,
        section,
        lambda: app_pricing(app),
        current=lambda: app.state.config.stripe.export(),
    )
    loop.start()
    logger.info("stripe sync every %s", section.sync_interval)
    return loop


def _recover_embedded(store: Store) -> None:
    """What a killed run of this data directory left: temporary files, missing usage.

    Runs before anything is inserted. The process's temporary files (the native path's
    request files, clickhouse-connect's insert files on the Python path) go under the
    data directory from now on, so a kill leaves nothing in the system's temporary
    directory and the next start removes what it left.
    """
    from meterline.collector import native

    native.clean_temp_dir(store)
    scratch = native.temp_dir(store)
    scratch.mkdir(exist_ok=True)
    tempfile.tempdir = str(scratch)
    reconcile_at_start(store)


def _clickhouse_http(
    settings: ServerSettings, store: Store, sock: socket.socket | None = None
) -> _UvicornListener | None:
    """The :8123 listener on ``sock`` (``None``: bind ``--clickhouse-http-port`` now)."""
    if store.kind != "chdb":
        if sock is not None:
            sock.close()
        logger.info("ClickHouse-HTTP endpoint off: point Grafana at the ClickHouse server itself")
        return None
    if sock is None:
        from meterline.listen import bind

        sock = bind(settings.host, settings.clickhouse_http_port, flag="--clickhouse-http-port")
    try:
        from meterline.clickhouse_http import create_app as create_ch_app
    except ImportError:
        sock.close()
        logger.warning("the ClickHouse-HTTP endpoint is not available in this build")
        return None
    # admin only: any admin key is the password (a consumer key never is)
    password = (settings.clickhouse_http_password,) if settings.clickhouse_http_password else (
        settings.admin_keys or None)  # fmt: skip
    app = create_ch_app(store, password=password, writable=settings.clickhouse_http_writable,
                        address=(settings.host, sock.getsockname()[1]))  # fmt: skip
    # accepted sockets inherit it: without it the body, written after the headers, waits
    # for the client's delayed ACK (~40 ms per response); asyncio sets it only on sockets
    # created with proto=IPPROTO_TCP
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _uvicorn("clickhouse-http", app, sock)
