"""Stop signals: usage is delivered (or on disk) first, and the process stops exactly as before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meterline.instrumentation.delivery.spool import Spool

from .fakes import OTLPReceiver, free_port
from .otlp import span_ids

ROOT = Path(__file__).resolve().parents[2]

# Ends one span, waits for its delivery, then ends three more that the (lazy) sender holds
# back: only a flush at the signal can deliver those.
APP = """
import os, signal, sys, threading, time
mode = sys.argv[1]
def app_handler(signum, frame):
    print("app handler", signum, flush=True)
    sys.exit(3)
if mode == "app-before":
    signal.signal(signal.SIGTERM, app_handler)
from opentelemetry import trace
from meterline.instrumentation.delivery import pipeline
if mode == "thread":
    t = threading.Thread(target=pipeline.configure); t.start(); t.join()
else:
    pipeline.configure()
tracer = trace.get_tracer("t")
tracer.start_span("chat first").end()
time.sleep(0.4)
for i in range(3):
    tracer.start_span(f"chat {i}").end()
term, intr = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
print("ready", getattr(term, "__name__", term), intr is signal.default_int_handler, flush=True)
time.sleep(30)
"""


def run(mode: str, endpoint: str, spool: Path, *, ignore: bool = False) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METERLINE_"))}
    env.update(
        METERLINE_OTLP_ENDPOINT=endpoint,
        METERLINE_SPOOL_DIR=str(spool),
        METERLINE_EXPORT_INTERVAL_MS="600000",
    )

    def preexec() -> None:
        if ignore:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    return subprocess.Popen(
        [sys.executable, "-c", APP, mode],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=preexec,
    )


def ready(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    for raw in proc.stdout:  # log lines (a warning that the collector is down) may come first
        line = raw.split()
        if line and line[0] == "ready":
            return line[1:]
    raise AssertionError(f"the app exited ({proc.wait()}) before it was ready")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_default_stop_signal_delivers_then_kills_with_the_same_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    with OTLPReceiver() as receiver:
        proc = run("plain", receiver.url, tmp_path)
        assert ready(proc) == ["_handler", "True"]  # SIGINT: Python's own, untouched
        assert len(span_ids(receiver.bodies)) == 1  # the rest waits for the lazy sender
        sent = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == -sig
        assert time.monotonic() - sent < 3
    assert len(span_ids(receiver.bodies)) == 4
    assert not Spool(tmp_path).has_pending()


def test_collector_down_the_signal_leaves_everything_on_disk(tmp_path: Path) -> None:
    proc = run("plain", f"http://127.0.0.1:{free_port()}/v1/traces", tmp_path)
    ready(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM
    with OTLPReceiver() as receiver:
        from meterline.instrumentation.delivery.flush import flush_spool
        from meterline.instrumentation.delivery.sender import OtlpHttpSender

        flush_spool(Spool(tmp_path), OtlpHttpSender(receiver.url))
    assert len(span_ids(receiver.bodies)) == 4


def test_an_app_handler_installed_before_is_chained_and_decides_the_exit(tmp_path: Path) -> None:
    with OTLPReceiver() as receiver:
        proc = run("app-before", receiver.url, tmp_path)
        ready(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 3
        assert proc.stdout is not None and "app handler 15" in proc.stdout.read()
    assert len(span_ids(receiver.bodies)) == 4  # its sys.exit ran the exit hooks


def test_an_ignored_sigterm_stays_ignored(tmp_path: Path) -> None:
    with OTLPReceiver() as receiver:
        proc = run("plain", receiver.url, tmp_path, ignore=True)
        assert ready(proc)[0] == str(int(signal.SIG_IGN))
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: exit hooks deliver
        assert proc.wait(timeout=10) == -signal.SIGINT
    assert len(span_ids(receiver.bodies)) == 4


def test_outside_the_main_thread_no_handler_is_installed(tmp_path: Path) -> None:
    with OTLPReceiver() as receiver:
        proc = run("thread", receiver.url, tmp_path)
        assert ready(proc)[0] == str(int(signal.SIG_DFL))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM


def test_a_hanging_collector_delays_the_stop_by_the_bounded_flush_only(tmp_path: Path) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # accepts, never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/traces"
        proc = run("plain", url, tmp_path)
        ready(proc)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == -signal.SIGTERM
        took = time.monotonic() - sent
    assert took < 4.0  # the 2 s flush bound, and the process's own teardown
    with OTLPReceiver() as receiver:
        from meterline.instrumentation.delivery.flush import flush_spool
        from meterline.instrumentation.delivery.sender import OtlpHttpSender

        flush_spool(Spool(tmp_path), OtlpHttpSender(receiver.url))
    assert len(set(span_ids(receiver.bodies))) == 4  # nothing lost
