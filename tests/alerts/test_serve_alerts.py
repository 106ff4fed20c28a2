"""Alerts inside ``meterline serve``: each crossing delivered once, signed, across a
restart; a delivery left pending by a stop is sent by the next start, under the same id;
a bad webhook in the configuration is refused at start with one line.

Money (tests/stripe/_support.py's pricing): gpt-4o input 2.50 per million, acme pays 20 %
markup: 200k input tokens bill 0.60, 500k bill 1.50.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from meterline.launcher import RunningServer, start_server
from tests.alerts._receiver import Receiver
from tests.alerts._support import SECRET, SECRET_ENV
from tests.e2e.spans import chat, make_spans
from tests.stripe._support import PRICING_YAML

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

BUDGET = """
budgets:
  limits:
    - {consumer: acme, limit: "1.00", unit: USD, period: total, mode: soft, thresholds: [50, 100]}
"""


def _config(tmp_path: Path, url: str, check_interval: str = "1s") -> Path:
    path = tmp_path / "meterline.yaml"
    alerts = (f"alerts:\n  check_interval: {check_interval}\n"
              "  retry: {initial: 1s, max: 2s, attempts: 10}\n"
              f"  webhooks:\n    - {{url: '{url}', secret: '${{{SECRET_ENV}}}'}}\n")  # fmt: skip
    path.write_text(PRICING_YAML + BUDGET + alerts, encoding="utf-8")
    return path


def _seed(data_dir: Path, tokens: int) -> None:
    subprocess.run([sys.executable, "-m", "tests.alerts._seed_child", str(data_dir), str(tokens)],
                   check=True, cwd=ROOT, timeout=120, capture_output=True)  # fmt: skip


def _serve(data_dir: Path, config: Path) -> RunningServer:
    return start_server(data_dir, args=["--config", str(config), "--rating-interval-s", "1"],
                        env={SECRET_ENV: SECRET})  # fmt: skip


def _wait(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_each_crossing_delivered_once_across_a_restart(tmp_path: Path) -> None:
    receiver = Receiver(SECRET).start()
    try:
        data_dir = tmp_path / "data"
        # the periodic check is an hour away: the start's first check finds 50 %, and
        # only the check after rating can find the 100 % crossed by usage sent later
        config = _config(tmp_path, receiver.url, check_interval="1h")
        _seed(data_dir, 200_000)  # 0.60: past 50 % before the server starts
        server = _serve(data_dir, config)
        try:
            _wait(lambda: len(receiver.delivered()) == 1)
            # more usage through OTLP: rated, then the check after rating finds 100 %
            consumer_call = chat("acme", input_tokens=300_000, output_tokens=0,
                                 response_id=f"r-{uuid.uuid4().hex}")  # fmt: skip
            exporter = OTLPSpanExporter(endpoint=server.otlp_http_url)
            assert exporter.export(make_spans([consumer_call])) is SpanExportResult.SUCCESS
            _wait(lambda: len(receiver.delivered()) == 2)
        finally:
            assert server.stop() == 0, server.log()
        again = _serve(data_dir, _config(tmp_path, receiver.url))
        try:
            time.sleep(4)  # several checks (every 1 s) over the same crossings
            assert "alerts:" not in again.log() or "failed" not in again.log(), again.log()
        finally:
            assert again.stop() == 0, again.log()
        got = receiver.requests
        assert [r.status for r in got] == [200, 200], got
        assert all(r.signed for r in got)
        assert sorted(r.body["alert"]["threshold"] for r in got) == [50, 100]
        assert len({r.delivery for r in got}) == 2
    finally:
        receiver.stop()


def test_a_pending_delivery_is_sent_by_the_next_start_under_the_same_id(tmp_path: Path) -> None:
    receiver = Receiver(SECRET, default=500).start()
    try:
        data_dir = tmp_path / "data"
        config = _config(tmp_path, receiver.url)
        _seed(data_dir, 200_000)
        server = _serve(data_dir, config)
        try:
            _wait(lambda: len(receiver.requests) >= 1)
        finally:
            assert server.stop() == 0, server.log()
        assert receiver.delivered() == []
        receiver.default = 200
        again = _serve(data_dir, config)
        try:
            _wait(lambda: len(receiver.delivered()) == 1)
            time.sleep(2)
        finally:
            assert again.stop() == 0, again.log()
        assert len(receiver.delivered()) == 1
        assert len({r.delivery for r in receiver.requests}) == 1
        assert all(r.signed for r in receiver.requests)
    finally:
        receiver.stop()


@pytest.mark.parametrize(
    ("webhook", "message"),
    [
        ("{url: 'ftp://hooks.example.com/x', secret: '${S}'}", "alerts.webhooks[0].url"),
        ("{url: 'hooks.example.com/x', secret: '${S}'}", "alerts.webhooks[0].url"),
        ("{url: 'https:///x', secret: '${S}'}", "alerts.webhooks[0].url"),
        ("{url: 'https://u:pw@h.example.com/x', secret: '${S}'}", "credentials"),
        ("{url: 'https://h.example.com/x', secret: 'whsec_literal'}", "environment variable"),
        (
            "{url: 'https://h.example.com/x', secret: '${NOT_SET_ANYWHERE_42}'}",
            "NOT_SET_ANYWHERE_42",
        ),
        ("{url: 'https://h.example.com/x', secret: '${S}', events: [budget.crossed]}", "events"),
    ],
)
def test_a_bad_webhook_is_refused_at_start_with_one_line(
    tmp_path: Path, webhook: str, message: str
) -> None:
    import os

    path = tmp_path / "meterline.yaml"
    path.write_text(f"alerts:\n  webhooks:\n    - {webhook}\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "meterline", "serve", "--data-dir", str(tmp_path / "d"),
         "--config", str(path), "--api-port", "0", "--otlp-http-port", "0",
         "--otlp-grpc-port", "0", "--clickhouse-http-port", "0"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "S": "x", "METERLINE_ADMIN_KEY": "k"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert message in lines[0] and "meterline.yaml" in lines[0], lines[0]
