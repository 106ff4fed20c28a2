"""A real ``redis-server`` (Debian's; ``.ci/run`` installs it) on a free loopback port, for
the tests of the Redis ledger, rate limits and alerts across replicas. A test that needs it
is skipped where it is missing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest


def start_redis(tmp_path) -> tuple[str, subprocess.Popen]:
    """Start one; return its URL and process (the caller terminates it)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    redis = pytest.importorskip("redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}/0", proc
        except redis.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None, "redis did not start"
            time.sleep(0.05)


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    """The URL of a redis-server started for this test, stopped after it."""
    url, proc = start_redis(tmp_path)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
