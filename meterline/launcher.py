"""Start ``meterline serve`` in a child process and wait until it listens.

Used by ``meterline demo`` and by the end-to-end tests: every port is chosen by
the OS (0), and the server reports them through ``--ready-file``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ServerFailed(RuntimeError):
    """The server exited or did not become ready in time."""


@dataclass
class RunningServer:
    """A ``meterline serve`` child process and where it listens."""

    process: subprocess.Popen[bytes]
    endpoints: dict[str, Any]
    log_path: Path

    @property
    def api_url(self) -> str:
        return str(self.endpoints["urls"]["api"])

    @property
    def otlp_http_url(self) -> str:
        """The OTLP/HTTP traces endpoint (``…/v1/traces``)."""
        return str(self.endpoints["urls"]["otlp_http"])

    @property
    def otlp_http_base(self) -> str:
        """The OTLP/HTTP base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` expects it."""
        return self.otlp_http_url.removesuffix("/v1/traces")

    @property
    def otlp_grpc_address(self) -> str:
        return str(self.endpoints["urls"]["otlp_grpc"])

    @property
    def clickhouse_http_url(self) -> str | None:
        return self.endpoints["urls"].get("clickhouse_http")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the graceful shutdown; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    data_dir: Path | str,
    *,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> RunningServer:
    """Start ``meterline serve --data-dir DATA_DIR`` on free loopback ports.

    Args:
        data_dir: the embedded store's directory.
        args: extra ``serve`` flags.
        env: extra environment variables (``METERLINE_*``).
        timeout: seconds to wait for every listener.

    Raises:
        ServerFailed: the process exited or was not ready in time (with its log).
    """
    workdir = Path(tempfile.mkdtemp(prefix="meterline-serve-"))
    ready = workdir / "ready.json"
    log_path = workdir / "serve.log"
    command = [
        sys.executable, "-m", "meterline", "serve", "--data-dir", str(data_dir),
        "--host", "127.0.0.1", "--otlp-http-port", "0", "--otlp-grpc-port", "0",
        "--api-port", "0", "--clickhouse-http-port", "0", "--ready-file", str(ready),
        *(args or []),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            raise ServerFailed(
                f"meterline serve exited with {process.returncode}:\n{log_path.read_text()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise ServerFailed(f"meterline serve not ready in {timeout}s:\n{log_path.read_text()}")
        time.sleep(0.05)
    return RunningServer(process, json.loads(ready.read_text()), log_path)
