"""Serve the simulator with uvicorn: in a background thread, or in the foreground.

Ports are bound here, before uvicorn starts, so port 0 yields a free port that is
known before the first request (``SimulatorServer.port``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

import uvicorn
from starlette.applications import Starlette

from meterline.listen import bind
from meterline.simulator._state import SimulatorConfig
from meterline.simulator.app import create_app
from meterline.simulator.ledger import Ledger

logger = logging.getLogger(__name__)


def _bind(host: str, port: int) -> socket.socket:
    """Raises :class:`~meterline.listen.ListenError` (one line naming ``--port``)."""
    return bind(host, port, flag="--port", backlog=1024)


def _uvicorn(app: Starlette, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


class SimulatorServer:
    """A simulator listening on ``host:port`` in a daemon thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        self.app = create_app(config)
        self.host = host
        self._sock = _bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._server = _uvicorn(self.app, log_level)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (the Anthropic SDK's ``base_url``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The OpenAI SDK's ``base_url`` (``…/v1``)."""
        return self.url + "/v1"

    @property
    def ledger(self) -> Ledger:
        return self.app.state.simulator.ledger

    def start(self, timeout: float = 10.0) -> SimulatorServer:
        """Start serving; returns once the server accepts connections."""
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"meterline-simulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start on {self.url}")
            time.sleep(0.01)
        logger.info("simulator listening on %s", self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (open streams get a short grace period) and close the socket."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> SimulatorServer:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start(
    config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> SimulatorServer:
    """Start a simulator in a background thread on ``host:port`` (0 = a free port)."""
    return SimulatorServer(config, host=host, port=port).start()


def serve(
    config: SimulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "info",
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM.

    Args:
        on_ready: called with the bound port once the socket is bound (before serving).

    Raises:
        ListenError: the port cannot be bound (nothing was started).
    """
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    if on_ready is not None:
        on_ready(bound)
    try:
        _uvicorn(create_app(config), log_level).run(sockets=[sock])
    finally:
        sock.close()
