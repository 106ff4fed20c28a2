"""Serve the ClickHouse-HTTP app on loopback ports over one store for the session.

chdb opens one data directory per process, so these fixtures use the suite's
``engine_dir`` (tests/conftest.py) with a database of their own.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import migrated_store

if TYPE_CHECKING:
    from meterline.store import Store

PASSWORD = "s3cret pass:word"


@dataclass
class Endpoint:
    url: str
    host: str
    port: int
    database: str


@pytest.fixture(scope="session")
def ch_store(engine_dir: Path) -> Iterator[Store]:
    yield from migrated_store(engine_dir, "chhttp")


def _serve(app: Any) -> Iterator[tuple[str, int]]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield host, port
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


def _endpoint(store: Store, **kwargs: Any) -> Iterator[Endpoint]:
    from meterline.clickhouse_http import create_app

    for host, port in _serve(create_app(store, **kwargs)):
        yield Endpoint(f"http://{host}:{port}", host, port, store.database)


@pytest.fixture(scope="session")
def readonly(ch_store: Store) -> Iterator[Endpoint]:
    """The default endpoint: read-only, password protected."""
    yield from _endpoint(ch_store, password=PASSWORD)


@pytest.fixture(scope="session")
def open_readonly(ch_store: Store) -> Iterator[Endpoint]:
    """Read-only with no password: no authentication."""
    yield from _endpoint(ch_store, password=None)


@pytest.fixture(scope="session")
def writable(ch_store: Store) -> Iterator[Endpoint]:
    """The writable test mode, password protected."""
    yield from _endpoint(ch_store, password=PASSWORD, writable=True)
