"""Serve the ClickHouse-HTTP app on loopback ports over one store for the session.

chdb opens one data directory per process, so these fixtures use the suite's
``engine_dir`` (tests/conftest.py) with a database of their own.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
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
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as meterline serve does
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


# --- what an attack must never touch ------------------------------------------------------


@dataclass
class Canary:
    """A file whose content must never appear in any response (errors included)."""

    path: Path
    secret: str

    def leaked(self, response: Any) -> bool:
        text = response.content.decode("latin-1") + repr(dict(response.headers))
        return self.secret in text


@pytest.fixture(scope="session")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Canary:
    secret = f"CANARY-{uuid.uuid4().hex}"
    path = tmp_path_factory.mktemp("canary") / "secret.txt"
    # a first line shaped like a CSV header: schema inference would turn it into a column name
    path.write_text(f"{secret},{secret}\n{secret},{secret}\n")
    return Canary(path, secret)


class Listener:
    """A TCP listener on loopback that counts the connections it accepts (and drops them).

    Every "outbound" request an attack could make is pointed here: the count must stay 0.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="session")
def listener() -> Iterator[Listener]:
    server = Listener()
    try:
        yield server
    finally:
        server.close()
