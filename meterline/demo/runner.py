"""Run the demo: server, simulator, instrumented sample app, then the usage table.

Contract: :func:`run_demo` returns only after ``GET /v1/usage`` reports exactly the
usage the simulator's ledger says it returned (requests, failed requests and every
token count), or raises :class:`DemoFailed` after ``timeout`` seconds with both sides.
Every port is chosen by the OS; a temporary data directory is removed at the end, a
given one (``--data-dir``) is kept, so ``meterline serve --data-dir DIR`` shows the same
data later. Needs the server extra (chdb, FastAPI, uvicorn).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meterline.simulator import SimulatorServer, start
from meterline.simulator.ledger import TOTAL_KEYS

logger = logging.getLogger(__name__)

SERVICE_NAME = "meterline-demo"
DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"


class DemoFailed(RuntimeError):
    """A step of the demo failed; the message says which, with the output that matters."""


@dataclass
class DemoResult:
    """What the demo metered."""

    rows: list[dict[str, Any]]
    """``GET /v1/usage?group_by=consumer`` rows."""
    expected: dict[str, int]
    """The simulator ledger's totals (what the provider returned)."""
    metered: dict[str, Any]
    """``GET /v1/usage`` totals (what meterline stored)."""
    urls: dict[str, str] = field(default_factory=dict)
    app_output: str = ""


def _api_headers() -> dict[str, str]:
    key = os.environ.get("METERLINE_ADMIN_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _get(url: str, params: dict[str, str] | None = None) -> tuple[int, str]:
    """GET with the admin key when set; (status, body). Standard library only."""
    if params:
        url += "?" + urllib.parse.urlencode(params)
    request = urllib.request.Request(url, headers=_api_headers())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def app_command(otlp_base: str) -> list[str]:
    """The sample app under ``meterline instrument``, exporting to ``otlp_base``."""
    return [
        sys.executable, "-m", "meterline", "instrument", "--endpoint", otlp_base,
        "--service-name", SERVICE_NAME, "--", sys.executable, "-m", "meterline.demo.sample_app",
    ]  # fmt: skip


def app_env(sim: SimulatorServer, spool_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OPENAI_BASE_URL=sim.openai_base_url,
        OPENAI_API_KEY="sk-meterline-demo",
        ANTHROPIC_BASE_URL=sim.url,
        ANTHROPIC_API_KEY="sk-ant-meterline-demo",
        METERLINE_SPOOL_DIR=str(spool_dir),
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    return env


ARRIVAL_KEYS = ("requests", "input_tokens", "output_tokens")


def wait_for_usage(
    api_url: str, expected: dict[str, int], *, timeout: float, settle: float = 0.5
) -> dict[str, Any]:
    """Poll ``/v1/usage`` until the usage has arrived; returns its totals row.

    Arrived means at least ``expected``'s requests, input and output tokens are stored;
    the totals are read again after ``settle`` seconds so late duplicates show up too.
    The caller compares every count.

    Raises:
        DemoFailed: not arrived after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    got: dict[str, Any] = {}
    text = ""

    def totals() -> dict[str, Any]:
        nonlocal text
        status, text = _get(api_url + "/v1/usage")
        if status != 200:
            return {}
        rows = json.loads(text).get("rows", [])
        return dict(rows[0]) if rows else {}

    while True:
        got = totals()
        if got and all(int(got.get(k, 0)) >= expected[k] for k in ARRIVAL_KEYS):
            time.sleep(settle)
            return totals()
        if time.monotonic() > deadline:
            raise DemoFailed(
                f"usage did not arrive within {timeout:.0f}s: the simulator returned "
                f"{expected}, meterline has {got or text}"
            )
        time.sleep(0.2)


def differences(expected: dict[str, int], metered: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{key: (returned by the provider, metered)}`` for every count that differs."""
    return {
        k: (v, int(metered.get(k, 0))) for k, v in expected.items() if int(metered.get(k, 0)) != v
    }


def usage_by_consumer(api_url: str) -> list[dict[str, Any]]:
    status, text = _get(api_url + "/v1/usage", {"group_by": "consumer"})
    if status != 200:
        raise DemoFailed(f"GET /v1/usage?group_by=consumer answered {status}: {text}")
    return list(json.loads(text)["rows"])


_COLUMNS = (
    ("consumer", "consumer"),
    ("requests", "requests"),
    ("failed", "failed_requests"),
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache read", "cache_read_input_tokens"),
    ("cache write", "cache_creation_input_tokens"),
    ("reasoning", "reasoning_output_tokens"),
)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The per-consumer table; a ``cost`` column appears when the rows carry prices."""
    columns = list(_COLUMNS)
    priced = any("cost" in r for r in rows)
    if priced:
        columns.append(("cost", "cost"))
    body = []
    for row in sorted(rows, key=lambda r: str(r.get("consumer", ""))):
        cells = []
        for _, key in columns:
            value = row.get(key, "")
            if key == "consumer":
                value = value or "(unattributed)"
            elif key == "cost":
                value = f"{value} {row.get('currency', '')}".strip()
                if row.get("unpriced_requests"):
                    value += f" (+{row['unpriced_requests']} unpriced)"
            cells.append(str(value))
        body.append(cells)
    head = [title for title, _ in columns]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=False)]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *(line(c) for c in body)])


def run_demo(
    *,
    data_dir: Path | None = None,
    keep_running: bool = False,
    timeout: float = 60.0,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the whole demo (see the module docstring).

    Args:
        data_dir: the embedded store's directory; a temporary one when None.
        keep_running: after the table, serve until SIGINT/SIGTERM.
        timeout: seconds for each of: server start, the sample app, usage arrival.
        echo: where the human-readable output goes.

    Raises:
        DemoFailed: a step failed (server, sample app, or usage never arrived).
    """
    from meterline.launcher import ServerFailed, start_server

    workdir = Path(tempfile.mkdtemp(prefix="meterline-demo-"))
    store_dir = data_dir if data_dir is not None else workdir / "data"
    try:
        echo(f"Starting meterline serve (data in {store_dir}) ...")
        try:
            server = start_server(store_dir, timeout=timeout)
        except ServerFailed as exc:
            raise DemoFailed(str(exc)) from exc
        with server, start() as sim:
            urls = dict(server.endpoints.get("urls", {}))
            echo(f"Provider simulator on {sim.url} (OpenAI: {sim.openai_base_url})")
            echo("Running the sample app under `meterline instrument` ...")
            try:
                app = subprocess.run(
                    app_command(server.otlp_http_base),
                    env=app_env(sim, workdir / "spool"),
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise DemoFailed(f"the sample app did not finish in {timeout:.0f}s") from exc
            if app.returncode != 0:
                raise DemoFailed(
                    f"the sample app exited with {app.returncode}:\n{app.stdout}{app.stderr}"
                )
            for text in app.stdout.splitlines():
                echo(f"  {text}")
            expected = {k: v for k, v in sim.ledger.totals().items() if k in TOTAL_KEYS}
            echo(f"Waiting until meterline has all {expected['requests']} responses ...")
            metered = wait_for_usage(server.api_url, expected, timeout=timeout)
            rows = usage_by_consumer(server.api_url)
            echo("")
            echo("Usage per consumer (GET /v1/usage?group_by=consumer):")
            echo(format_table(rows))
            echo("")
            wrong = differences(expected, metered)
            if wrong:
                lines = [
                    f"  {k}: provider returned {a}, meterline has {b}"
                    for k, (a, b) in wrong.items()
                ]
                echo("MISMATCH between the provider's usage and meterline's:")
                echo("\n".join(lines))
                raise DemoFailed("metered usage differs from what the provider returned")
            echo(
                "Every count above equals what the simulator returned "
                f"({expected['input_tokens']} input, {expected['output_tokens']} output tokens)."
            )
            _echo_where(echo, server.api_url, urls, data_dir)
            result = DemoResult(rows, expected, metered, urls, app.stdout)
            if keep_running:
                echo("Serving until Ctrl-C ...")
                _wait_for_signal()
            return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _echo_where(
    echo: Callable[[str], None], api_url: str, urls: dict[str, str], data_dir: Path | None
) -> None:
    echo("")
    echo(f"API:         {api_url}/v1/usage?group_by=consumer,feature  (docs: {api_url}/docs)")
    echo(f"Invoices:    {api_url}/v1/invoices/acme")
    echo(f"OTLP:        {urls.get('otlp_http', '')}  gRPC {urls.get('otlp_grpc', '')}")
    if urls.get("clickhouse_http"):
        echo(f"ClickHouse:  {urls['clickhouse_http']}  (Grafana data source)")
    where = DASHBOARDS if DASHBOARDS.is_dir() else Path("dashboards")
    echo(f"Dashboards:  {where}  (Grafana: provisioning/ and the ClickHouse data source)")
    if data_dir is None:
        echo("The data was temporary; pass --data-dir DIR to keep it, --keep-running to explore.")
    else:
        echo(f"Data kept in {data_dir}: `meterline serve --data-dir {data_dir}` serves it again.")


def _wait_for_signal() -> None:
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
