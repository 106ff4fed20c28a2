"""``meterline serve``: collector, aggregator and ClickHouse-HTTP in one process.

One asyncio loop hosts every listener (chdb allows one process per data
directory, so in embedded mode they must share the process):

- OTLP/HTTP (bare ASGI app under uvicorn) and OTLP/gRPC (grpc.aio),
- the aggregator API (FastAPI under uvicorn),
- the ClickHouse-compatible HTTP endpoint for Grafana and tools.

Shutdown (SIGTERM/SIGINT) is ordered so nothing acknowledged is lost: the OTLP
listeners stop taking requests and finish the ones in flight (their acks wait
for the writer), the writer writes everything queued, then the API and the
store close.

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


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


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


async def serve(
    settings: ServerSettings,
    *,
    ready_file: Path | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run every listener until SIGTERM/SIGINT (or ``stop`` is set)."""
    from meterline.aggregator.app import create_app
    from meterline.aggregator.auth import OPEN_WARNING, open_api_refusal
    from meterline.collector.budget import BodyBudget
    from meterline.collector.otlp_grpc import create_server as create_grpc_server
    from meterline.collector.otlp_http import OTLPHTTPApp
    from meterline.collector.writer import Writer

    refusal = open_api_refusal(settings)
    if refusal is not None:
        raise ServeRefused(refusal)
    store = open_configured_store(settings)
    applied = store.migrate()
    if applied:
        logger.info("migrations applied: %s", applied)
    if store.kind == "chdb":
        _recover_embedded(store)
    if settings.fsync:
        for table in ("otel_traces", "llm_usage"):
            store.command(f"ALTER TABLE {{db}}.{table} MODIFY SETTING fsync_after_insert = 1")

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
        _bind(host, settings.otlp_http_port),
    )
    grpc_server, grpc_port = create_grpc_server(
        writer,
        host=host,
        port=settings.otlp_grpc_port,
        token=settings.ingest_token,
        keep_all=settings.keep_all_spans,
        budget=bodies,
    )
    api_sock = _bind(host, settings.api_port)
    address = (host, api_sock.getsockname()[1])
    api = _uvicorn("api", create_app(settings, store, ready=lambda: listening, address=address),
                   api_sock)  # fmt: skip
    listeners = [otlp, api]
    ch_http = _clickhouse_http(settings, store)
    if ch_http is not None:
        listeners.append(ch_http)

    await grpc_server.start()
    for listener in listeners:
        await listener.start()
    listening = True
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
    if checkpointer is not None:
        checkpointer.stop()
    logger.info("all acknowledged spans written (%d in this run)", writer.written)
    for listener in listeners[1:]:
        await listener.stop()
    store.close()


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


def _clickhouse_http(settings: ServerSettings, store: Store) -> _UvicornListener | None:
    if store.kind != "chdb":
        logger.info("ClickHouse-HTTP endpoint off: point Grafana at the ClickHouse server itself")
        return None
    try:
        from meterline.clickhouse_http import create_app as create_ch_app
    except ImportError:
        logger.warning("the ClickHouse-HTTP endpoint is not available in this build")
        return None
    # admin only: any admin key is the password (a consumer key never is)
    password = (settings.clickhouse_http_password,) if settings.clickhouse_http_password else (
        settings.admin_keys or None)  # fmt: skip
    sock = _bind(settings.host, settings.clickhouse_http_port)
    app = create_ch_app(store, password=password, writable=settings.clickhouse_http_writable,
                        address=(settings.host, sock.getsockname()[1]))  # fmt: skip
    # accepted sockets inherit it: without it the body, written after the headers, waits
    # for the client's delayed ACK (~40 ms per response); asyncio sets it only on sockets
    # created with proto=IPPROTO_TCP
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _uvicorn("clickhouse-http", app, sock)
