"""Serve the stand-in with uvicorn: in a background thread (tests), or in the foreground.

The port is bound before uvicorn starts, so port 0 yields a free port known at once. The
server hands the app a way to drop a connection without answering (it aborts the client's
transport), which is how ``drop_before`` / ``drop_after`` faults lose an answer.
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
from meterline.stripe_standin._state import Standin, StandinConfig
from meterline.stripe_standin.app import create_app

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
    server = uvicorn.Server(config)

    def drop(client: tuple[str, int] | None) -> bool:
        for connection in list(server.server_state.connections):
            if client is not None and getattr(connection, "client", None) == tuple(client):
                connection.transport.abort()
                return True
        return False

    app.state.dropper = drop
    return server


class StandinServer:
    """A stand-in listening on ``host:port`` in a daemon thread; a context manager.

    ``api_base`` is what ``StripeClient(base_addresses={"api": …, "meter_events": …})``
    takes for both addresses; ``state`` is the :class:`Standin` to read and steer.
    """

    def __init__(
        self,
        config: StandinConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        self.state = Standin(config)
        self.app = create_app(standin=self.state)
        self.host = host
        self._sock = _bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._server = _uvicorn(self.app, log_level)
        self._thread: threading.Thread | None = None

    @property
    def api_base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_addresses(self) -> dict[str, str]:
        """``StripeClient``'s ``base_addresses`` for this stand-in (API and meter events)."""
        return {"api": self.api_base, "meter_events": self.api_base}

    @property
    def api_key(self) -> str:
        """A key the stand-in accepts (the first of ``StandinConfig.api_keys``)."""
        return self.state.config.api_keys[0]

    def start(self, timeout: float = 10.0) -> StandinServer:
        """Start serving; returns once the server accepts connections."""
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"meterline-stripe-standin-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"stripe stand-in did not start on {self.api_base}")
            time.sleep(0.01)
        logger.info("stripe stand-in listening on %s", self.api_base)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> StandinServer:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start(
    config: StandinConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> StandinServer:
    """Start a stand-in in a background thread on ``host:port`` (0 = a free port)."""
    return StandinServer(config, host=host, port=port).start()


def serve(
    config: StandinConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "info",
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM.

    Args:
        on_ready: called with the bound port once the socket is bound (before serving).
    """
    sock = _bind(host, port)
    if on_ready is not None:
        on_ready(sock.getsockname()[1])
    try:
        _uvicorn(create_app(config), log_level).run(sockets=[sock])
    finally:
        sock.close()
