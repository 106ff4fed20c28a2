"""No usage lost when an instrumented app stops: SIGTERM, SIGINT, kill -9, the app's own handlers.

A real ``openai`` SDK app (``app_stop.py``) runs under ``meterline instrument`` and under
stock ``opentelemetry-instrument`` against the provider simulator, exporting to a real
``meterline serve`` (or to a closed port: the collector is down). It is stopped the way
process managers stop apps; every test then checks, through ``GET /v1/usage``, that the
store holds exactly what the simulator's ledger says it returned (requests and every
token count), counted once, and that the app exited as it would without meterline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meterline.simulator import SimulatorConfig, SimulatorServer, start
from meterline.simulator.ledger import TOTAL_KEYS
from tests.instrumentation.fakes import free_port

pytestmark = pytest.mark.e2e

APP = Path(__file__).with_name("app_stop.py")
WRAPPERS = {
    "meterline": [sys.executable, "-m", "meterline", "instrument", "--"],
    "opentelemetry": [str(Path(sys.executable).with_name("opentelemetry-instrument"))],
}
# The exit flush is bounded by METERLINE_SHUTDOWN_TIMEOUT_SECONDS (default 2 s); the tests
# give it 5 s so that a loaded CI machine (the collector answering slowly) does not turn a
# bounded flush into a lost race, and check the exit within that bound plus start-up slack.
SHUTDOWN_TIMEOUT = 5.0
STOP_BOUND = SHUTDOWN_TIMEOUT + 3.0  # seconds from the signal to the exit


class Stack:
    def __init__(self, server: Any, sim: SimulatorServer) -> None:
        self.server = server
        self.sim = sim

    def delivered(self, consumer: str) -> dict[str, int]:
        r = httpx.get(self.server.api_url + "/v1/usage", params={"consumer": consumer}, timeout=10)
        assert r.status_code == 200, r.text
        rows = r.json()["rows"]
        return {k: int(rows[0][k]) if rows else 0 for k in TOTAL_KEYS}

    def expected(self, consumer: str) -> dict[str, int]:
        return self.sim.ledger.totals(tag=consumer)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    pytest.importorskip("chdb")
    from meterline.launcher import start_server

    tmp = tmp_path_factory.mktemp("stop-e2e")
    with start_server(tmp / "data") as server, start(SimulatorConfig()) as sim:
        yield Stack(server, sim)


class App:
    """One app run: its consumer, spool directory and whether the collector is up."""

    def __init__(self, stack: Stack, tmp: Path, *, collector_up: bool = True) -> None:
        self.stack = stack
        self.consumer = f"stop-{uuid.uuid4().hex[:10]}"
        self.spool = tmp / "spool"
        self.ready = tmp / "ready.json"
        self.collector_up = collector_up
        self.dead = f"http://127.0.0.1:{free_port()}"
        self.log = tmp / "app.log"

    def env(self, *, collector_up: bool | None = None) -> dict[str, str]:
        up = self.collector_up if collector_up is None else collector_up
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METERLINE_"))}
        env.update(
            OPENAI_BASE_URL=self.stack.sim.openai_base_url,
            OPENAI_API_KEY="sk-e2e",
            OTEL_EXPORTER_OTLP_ENDPOINT=self.stack.server.otlp_http_base if up else self.dead,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_EXPORTER_OTLP_TIMEOUT="1",
            OTEL_SERVICE_NAME="stop-e2e",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            METERLINE_SPOOL_DIR=str(self.spool),
            METERLINE_CONSUMER_ID=self.consumer,
            METERLINE_SHUTDOWN_TIMEOUT_SECONDS=str(SHUTDOWN_TIMEOUT),
        )
        return env

    def start(
        self,
        *args: str,
        wrapper: str | None = "meterline",
        preexec: Callable[[], None] | None = None,
        collector_up: bool | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        command = [sys.executable, str(APP), str(self.ready), *args]
        if wrapper is not None:
            command = [*WRAPPERS[wrapper], *command]
        with self.log.open("ab") as log:
            return subprocess.Popen(
                command,
                env={**self.env(collector_up=collector_up), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
            )

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> float:
        """Waits for the app's last call to finish; returns when (time.time())."""
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            assert proc.poll() is None, f"app exited early ({proc.returncode}): {self.output()}"
            assert time.monotonic() < deadline, "app never finished its calls"
            time.sleep(0.01)
        return float(json.loads(self.ready.read_text())["done"])

    def stop_with(
        self, proc: subprocess.Popen[bytes], sig: int, *, after: float
    ) -> tuple[int, float]:
        """Sends ``sig`` ``after`` seconds past the last call; returns (exit code, seconds)."""
        done = self.wait_ready(proc)
        time.sleep(max(0.0, done + after - time.time()))
        sent = time.monotonic()
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"app did not stop after signal {sig}: {self.output()}") from None
        return code, time.monotonic() - sent

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def spooled(self) -> list[str]:
        if not self.spool.exists():
            return []
        return sorted(n for n in os.listdir(self.spool) if not n.endswith(".owner"))

    def flush(self, *extra: str, up: bool = True) -> subprocess.CompletedProcess[str]:
        endpoint = self.stack.server.otlp_http_url if up else self.dead + "/v1/traces"
        return subprocess.run(
            [sys.executable, "-m", "meterline", "spool", "flush", "--endpoint", endpoint, *extra],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def assert_exact(self) -> None:
        expected = self.stack.expected(self.consumer)
        assert expected["requests"] > 0 and expected["input_tokens"] > 0
        assert self.stack.delivered(self.consumer) == expected, self.output()

    def deliver_rest_and_assert_exact(self) -> None:
        """``meterline spool flush`` delivers what is left; a second flush finds nothing."""
        first = self.flush()
        assert first.returncode == 0, first.stdout + first.stderr
        self.assert_exact()
        again = self.flush()
        assert again.returncode == 0 and again.stdout.startswith("delivered 0 "), again.stdout
        assert not self.spooled()
        self.assert_exact()


@pytest.fixture
def app(stack: Stack, tmp_path: Path) -> App:
    return App(stack, tmp_path)


@pytest.mark.parametrize("sender", ["default", "lazy"])
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_sigterm_one_second_after_the_last_call_collector_up(
    app: App, wrapper: str, sender: str
) -> None:
    # "lazy": the sender delivers the first batch, then waits 10 minutes — only the flush
    # at SIGTERM can deliver the later calls.
    env = {"METERLINE_EXPORT_INTERVAL_MS": "600000"} if sender == "lazy" else {}
    proc = app.start("--calls", "3", wrapper=wrapper, env=env)
    code, took = app.stop_with(proc, signal.SIGTERM, after=1.0)
    assert code == -signal.SIGTERM, app.output()  # killed by SIGTERM, as without meterline
    assert took < STOP_BOUND
    app.assert_exact()  # delivered before the process died: no waiting, no flush
    assert not app.spooled()


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_sigterm_one_second_after_the_last_call_collector_down(app: App, wrapper: str) -> None:
    app.collector_up = False
    proc = app.start("--calls", "3", wrapper=wrapper)
    code, took = app.stop_with(proc, signal.SIGTERM, after=1.0)
    assert code == -signal.SIGTERM, app.output()
    assert took < STOP_BOUND
    assert app.spooled(), "nothing reached the spool"
    assert app.flush(up=False).returncode == 1  # still down: kept, not dropped
    app.deliver_rest_and_assert_exact()


@pytest.mark.parametrize("collector_up", [True, False])
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_kill_9_half_a_second_after_the_last_call(
    app: App, wrapper: str, collector_up: bool
) -> None:
    app.collector_up = collector_up
    proc = app.start("--calls", "4", wrapper=wrapper)
    code, _ = app.stop_with(proc, signal.SIGKILL, after=0.5)
    assert code == -signal.SIGKILL
    if not collector_up:
        assert app.spooled(), "nothing reached the spool within 0.5 s"
    # The next start of the app delivers the rest (collector up now), counted once.
    app.ready.unlink()
    nxt = app.start("--calls", "0", wrapper=wrapper, collector_up=True)
    app.wait_ready(nxt)
    (app.ready.parent / (app.ready.name + ".stop")).touch()
    assert nxt.wait(timeout=30) == 0, app.output()
    app.assert_exact()
    assert not app.spooled()


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_sigterm_during_a_streamed_call_records_it(app: App, wrapper: str) -> None:
    proc = app.start("--calls", "2", "--then-stream", wrapper=wrapper)
    code, _ = app.stop_with(proc, signal.SIGTERM, after=0.3)  # mid-stream
    assert code == -signal.SIGTERM, app.output()
    done = app.stack.expected(app.consumer)
    [cut] = app.stack.sim.ledger.entries(tag=app.consumer + "-stream")
    assert not cut.completed
    got = app.stack.delivered(app.consumer)
    # The two finished calls exactly, plus the interrupted stream as an estimate.
    assert got["requests"] == done["requests"] + 1, app.output()
    assert got["input_tokens"] > done["input_tokens"]
    assert got["output_tokens"] > done["output_tokens"]


@pytest.mark.parametrize("collector_up", [True, False])
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_a_short_lived_job_exits_right_after_its_last_call(
    app: App, wrapper: str, collector_up: bool
) -> None:
    app.collector_up = collector_up
    (app.ready.parent / (app.ready.name + ".stop")).touch()  # exits as soon as it is done
    proc = app.start("--calls", "3", wrapper=wrapper)
    assert proc.wait(timeout=60) == 0, app.output()
    if collector_up:
        app.assert_exact()
        assert not app.spooled()
    else:
        assert app.spooled()
        app.deliver_rest_and_assert_exact()


@pytest.mark.parametrize("collector_up", [True, False])
def test_sigint(app: App, collector_up: bool) -> None:
    app.collector_up = collector_up
    proc = app.start("--calls", "3")
    code, took = app.stop_with(proc, signal.SIGINT, after=0.5)
    assert code == -signal.SIGINT, app.output()  # KeyboardInterrupt: Python re-raises SIGINT
    assert took < STOP_BOUND
    if collector_up:
        app.assert_exact()
        assert not app.spooled()
    else:
        app.deliver_rest_and_assert_exact()


@pytest.mark.parametrize(
    ("handler", "on_signal", "expected_code", "delivered_at_exit"),
    [
        ("after", "exit", 7, True),  # sys.exit in the app's handler: atexit flushes
        ("after", "flag", 7, True),  # graceful: the main loop returns the code
        ("after", "os-exit", 5, False),  # os._exit: on disk, delivered by the next flush
        ("before", "exit", 7, True),  # ours chains to the app's handler
        ("before", "default", -signal.SIGTERM, True),  # the app re-raises SIG_DFL
        ("before", "os-exit", 5, True),  # ours runs first: delivered before its os._exit
    ],
)
def test_the_apps_own_sigterm_handler_runs_and_keeps_its_exit_code(
    app: App, handler: str, on_signal: str, expected_code: int, delivered_at_exit: bool
) -> None:
    code_arg = "5" if on_signal == "os-exit" else "7"
    args = ["--calls", "3", "--handler", handler, "--on-signal", on_signal, "--exit-code", code_arg]
    proc = app.start(*args, wrapper="meterline" if handler == "after" else None)
    code, took = app.stop_with(proc, signal.SIGTERM, after=1.0)
    assert code == expected_code, app.output()
    assert took < STOP_BOUND
    handled = app.ready.parent / (app.ready.name + ".handled")
    assert handled.read_text().split() == [str(int(signal.SIGTERM))]  # it ran, once
    if delivered_at_exit:
        app.assert_exact()
        assert not app.spooled()
    else:
        app.deliver_rest_and_assert_exact()


@pytest.mark.parametrize(
    ("wrapper", "how"),
    [("meterline", "inherited"), ("opentelemetry", "inherited"), ("meterline", "app")],
)
def test_an_app_that_ignores_sigterm_still_ignores_it(app: App, wrapper: str, how: str) -> None:
    def ignore() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    if how == "inherited":
        proc = app.start("--calls", "3", wrapper=wrapper, preexec=ignore)
    else:
        proc = app.start("--calls", "3", "--ignore-term", wrapper=wrapper)
    app.wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None, "the app died of a SIGTERM it ignores"
    (app.ready.parent / (app.ready.name + ".stop")).touch()
    assert proc.wait(timeout=30) == 0, app.output()
    app.assert_exact()
    assert not app.spooled()


def test_crash_between_ack_and_delete_is_counted_once(app: App) -> None:
    app.collector_up = False
    proc = app.start("--calls", "3")
    code, _ = app.stop_with(proc, signal.SIGTERM, after=0.2)
    assert code == -signal.SIGTERM
    assert app.spooled()
    # A flusher that dies after the collector acknowledged, before deleting the file.
    crash = (
        "import os, sys\n"
        "os.unlink = lambda *a, **k: os._exit(3)\n"
        "from meterline.cli import main\n"
        "sys.argv = ['meterline', 'spool', 'flush', '--endpoint', sys.argv[1]]\n"
        "main()\n"
    )
    crashed = subprocess.run(
        [sys.executable, "-c", crash, app.stack.server.otlp_http_url],
        env=app.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.returncode == 3, crashed.stdout + crashed.stderr
    app.assert_exact()  # acknowledged: stored
    assert app.spooled(), "the acknowledged batch should still be on disk"
    resent = app.flush()
    assert resent.returncode == 0 and not resent.stdout.startswith("delivered 0 "), resent.stdout
    assert not app.spooled()
    app.assert_exact()  # sent twice, counted once


def test_concurrent_apps_sharing_a_spool_and_torn_files(stack: Stack, tmp_path: Path) -> None:
    apps = [App(stack, tmp_path / str(i), collector_up=False) for i in range(3)]
    shared = tmp_path / "shared-spool"
    for a in apps:
        a.ready.parent.mkdir(parents=True)
        a.spool = shared
    procs = [a.start("--calls", "4") for a in apps]
    for a, p in zip(apps, procs, strict=True):
        a.wait_ready(p)
    time.sleep(0.3)
    procs[0].send_signal(signal.SIGTERM)
    procs[1].kill()
    (apps[2].ready.parent / (apps[2].ready.name + ".stop")).touch()
    assert [p.wait(timeout=30) for p in procs] == [-signal.SIGTERM, -signal.SIGKILL, 0]
    # What a kill -9 or a power cut can leave: garbage, an empty file, a torn one.
    (shared / "00000000000000000001-dead-000000.batch").write_bytes(b"\x00garbage")
    (shared / "00000000000000000002-dead-000000.batch").write_bytes(b"")
    good = sorted(shared.glob("*.batch"))[-1].read_bytes()
    (shared / "00000000000000000003-dead-000000.batch").write_bytes(good[: len(good) // 2])
    flushers = [
        subprocess.Popen(
            [sys.executable, "-m", "meterline", "spool", "flush", "--endpoint",
             stack.server.otlp_http_url],
            env=apps[0].env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]  # fmt: skip
    outputs = [f.communicate(timeout=60)[0] for f in flushers]
    assert [f.returncode for f in flushers] == [0, 0, 0], outputs
    for a in apps:
        a.assert_exact()
    left = sorted(n for n in os.listdir(shared) if not n.endswith(".owner"))
    assert all(n.endswith(".corrupt") for n in left) and len(left) == 3, left  # never sent
