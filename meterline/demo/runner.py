"""Run the demo: server, simulator, instrumented sample app, then each consumer's bill.

Contract: :func:`run_demo` waits until ``GET /v1/usage`` has the usage the simulator's
ledger says it served, then prints each consumer's invoice as ``GET
/v1/invoices/{consumer}?period=YYYY-MM`` returns it (:mod:`meterline.demo.bill`: no
figure recomputed), what was not billed and why, and the check of ``/v1/usage`` and the
invoices against the ledger; a difference is printed and raises :class:`DemoFailed`.
URLs are printed only with ``keep_running``, while the servers run, and only after they
answered (:mod:`meterline.demo.links`). The demo's configuration gives the consumer
``acme`` a plan with a markup (:data:`DEMO_CONFIG`). Every port is chosen by the OS; a
temporary data directory is removed at the end, a given one (``--data-dir``) is kept
with the configuration inside, so ``meterline serve`` shows the same bills later. Needs
the server extra (chdb, FastAPI, uvicorn).

Known limit: a run that crosses a UTC month boundary bills the two months as one
``from``/``to`` range (still an invoice of the API, but not a ``period``).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from meterline.demo.bill import bill_lines, ledger_line
from meterline.demo.links import Link, get, key_note, links, request
from meterline.simulator import SimulatorServer, start
from meterline.simulator.ledger import TOTAL_KEYS

logger = logging.getLogger(__name__)

SERVICE_NAME = "meterline-demo"
DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
CONFIG_NAME = "meterline-demo.yaml"
MARKUPS = {"acme": "20"}
"""Plans of the demo's configuration: consumer → markup percent."""
DEMO_CONFIG = (
    "# meterline demo: plans (prices come from the bundled catalogue)\n"
    "plans:\n  consumers:\n"
    + "".join(f'    {c}: {{markup_percent: "{p}"}}\n' for c, p in MARKUPS.items())
)
STATUS_HEADER = "X-Meterline-Invoice-Status"
"""The invoice route's header: ``open``, or ``final; revision=N``."""
LINKED_CONSUMER = "acme"


class DemoFailed(RuntimeError):
    """A step of the demo failed; the message says which, with the output that matters."""


@dataclass
class DemoResult:
    """What the demo metered and billed."""

    rows: list[dict[str, Any]]
    """``GET /v1/usage?group_by=consumer`` rows."""
    expected: dict[str, int]
    """The simulator ledger's totals (what the provider returned)."""
    metered: dict[str, Any]
    """``GET /v1/usage`` totals (what meterline stored)."""
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``GET /v1/invoices/{consumer}`` bodies, by consumer."""
    period: dict[str, str] = field(default_factory=dict)
    """The invoices' query: ``{"period": "YYYY-MM"}`` (or ``from``/``to``)."""
    links: list[Link] = field(default_factory=list)
    """What was printed while serving (empty without ``keep_running``)."""
    urls: dict[str, str] = field(default_factory=dict)
    app_output: str = ""


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
        status, text = get(api_url + "/v1/usage")
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


def _get_json(url: str, params: dict[str, str] | None = None) -> Any:
    status, text = get(url, params)
    if status != 200:
        shown = url + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")
        raise DemoFailed(f"GET {shown} answered {status}: {text[:500]}")
    return json.loads(text)


def usage_by_consumer(api_url: str) -> list[dict[str, Any]]:
    return list(_get_json(api_url + "/v1/usage", {"group_by": "consumer"})["rows"])


def _month(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}"


def _month_start(at: datetime, months_later: int = 0) -> datetime:
    index = at.year * 12 + at.month - 1 + months_later
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def bill_period(first: datetime, last: datetime) -> tuple[dict[str, str], tuple[str, str]]:
    """The invoices' query for calls made between ``first`` and ``last`` (UTC), and the
    ``[start, end)`` it covers: their month, or both months as a range."""
    start, end = _month_start(first), _month_start(last, 1)
    shown = (start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d"))
    if _month(first) == _month(last):
        return {"period": _month(first)}, shown
    return {"from": start.isoformat(), "to": end.isoformat()}, shown


def unpriced_reasons(api_url: str, invoices: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Why each unpriced model is unpriced, from ``GET /v1/prices?provider=&model=``."""
    reasons = {}
    for key in {(u["provider"], u["model"]) for i in invoices for u in i.get("unpriced", ())}:
        found = _get_json(api_url + "/v1/prices", {"provider": key[0], "model": key[1]})
        reasons[key] = (
            f"{key[0]} has tokens of a type its price lacks"
            if found.get("prices")
            else "no price; add a `models` entry"
        )
    return reasons


def _config_file(store_dir: Path, workdir: Path, keep: bool) -> Path:
    where = store_dir if keep else workdir
    where.mkdir(parents=True, exist_ok=True)
    path = where / CONFIG_NAME
    path.write_text(DEMO_CONFIG)
    return path


def usage_totals(api_url: str, params: dict[str, str] | None = None) -> dict[str, int]:
    """``GET /v1/usage`` totals as integers (``{}`` for an empty store)."""
    rows = _get_json(api_url + "/v1/usage", params)["rows"]
    return {k: int(rows[0].get(k, 0)) for k in TOTAL_KEYS} if rows else {}


def fetch_invoices(
    api_url: str, consumers: list[str], period: dict[str, str]
) -> tuple[dict[str, dict[str, Any]], bool]:
    """Each consumer's invoice body, and whether all of them are open (not finalised)."""
    invoices, open_ = {}, True
    for consumer in consumers:
        reply = request(f"{api_url}/v1/invoices/{quote(consumer, safe='')}", period)
        if reply.status != 200:
            raise DemoFailed(f"GET /v1/invoices/{consumer} answered {reply.status}: {reply.text}")
        invoices[consumer] = json.loads(reply.text)
        status = {k.lower(): v for k, v in reply.headers.items()}.get(STATUS_HEADER.lower(), "")
        open_ = open_ and status.startswith("open")
    return invoices, open_


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
        keep_running: after the bill, print the links and serve until SIGINT/SIGTERM.
        timeout: seconds for each of: server start, the sample app, usage arrival.
        echo: where the human-readable output goes.

    Raises:
        DemoFailed: a step failed (server, sample app, usage never arrived, or metered
            usage differs from the ledger).
    """
    from meterline.launcher import ServerFailed, start_server

    workdir = Path(tempfile.mkdtemp(prefix="meterline-demo-"))
    store_dir = data_dir if data_dir is not None else workdir / "data"
    try:
        config = _config_file(store_dir, workdir, keep=data_dir is not None)
        echo("meterline demo: a sample app's openai and anthropic SDK calls, metered with zero")
        echo("code changes and billed, on a simulated provider (no API keys, no money spent) ...")
        try:
            server = start_server(store_dir, args=["--config", str(config)], timeout=timeout)
        except ServerFailed as exc:
            raise DemoFailed(str(exc)) from exc
        with server, start() as sim:
            api = server.api_url
            before = usage_totals(api)
            first = datetime.now(UTC)
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
            last = datetime.now(UTC)
            if app.returncode != 0:
                raise DemoFailed(
                    f"the sample app exited with {app.returncode}:\n{app.stdout}{app.stderr}"
                )
            expected = {k: v for k, v in sim.ledger.totals().items() if k in TOTAL_KEYS}
            target = {k: v + before.get(k, 0) for k, v in expected.items()}
            after = wait_for_usage(api, target, timeout=timeout)
            metered = {k: int(after.get(k, 0)) - before.get(k, 0) for k in TOTAL_KEYS}
            rows = usage_by_consumer(api)
            period, counted = bill_period(first, last)
            in_range = usage_totals(api, {"from": counted[0], "to": counted[1]})
            consumers = sorted(str(r["consumer"]) for r in rows if r["consumer"])
            invoices, all_open = fetch_invoices(api, consumers, period)
            bills = list(invoices.values())
            query = "&".join(f"{k}={v}" for k, v in period.items())
            label = period.get("period", f"{counted[0]} to {counted[1]}")
            echo("")
            echo(
                f"Bills for {label}{' (open)' if all_open else ''}, "
                f"as GET /v1/invoices/{{consumer}}?{query} returns them"
            )
            echo("(prices per 1M tokens; each line rounded half-up to the cent, as invoices are):")
            for text in bill_lines(
                bills, markup_percent=MARKUPS, unpriced_reasons=unpriced_reasons(api, bills)
            ):
                echo(text)
            echo("")
            matches, check = ledger_line(
                expected,
                metered,
                bills,
                billed_range_tokens=in_range.get("input_tokens", 0)
                + in_range.get("output_tokens", 0),
                earlier_usage=bool(before.get("requests")),
            )
            echo(check)
            if not matches:
                raise DemoFailed("metered usage differs from what the provider returned")
            urls = dict(server.endpoints.get("urls", {}))
            result = DemoResult(rows, expected, metered, invoices, period, [], urls, app.stdout)
            if keep_running:
                result.links = _echo_links(echo, api, urls, period, counted)
                _echo_kept(echo, data_dir, config)
                echo("Serving until Ctrl-C ...")
                _wait_for_signal()
            else:
                echo(
                    "The servers have stopped; `meterline demo --keep-running` keeps them up "
                    "and shows where to look."
                )
                _echo_kept(echo, data_dir, config)
            return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _echo_links(
    echo: Callable[[str], None],
    api_url: str,
    urls: dict[str, str],
    period: dict[str, str],
    counted: tuple[str, str],
) -> list[Link]:
    found, curl = links(
        api_url,
        urls.get("clickhouse_http"),
        consumer=LINKED_CONSUMER,
        period=period,
        counted=counted,
    )
    echo("")
    echo(f"While it runs ({key_note()}):")
    width = max(len(link.label) for link in found)
    for link in found:
        status = "" if link.status == 200 else f"  (answered {link.status}) {link.note}"
        echo(f"  {link.label.ljust(width)}  {link.url}{status}")
    if curl:
        echo(f"  {curl}")
    where = DASHBOARDS if DASHBOARDS.is_dir() else Path("dashboards")
    echo(f"  Grafana: the dashboards in {where}, with the ClickHouse URL as data source")
    return found


def _echo_kept(echo: Callable[[str], None], data_dir: Path | None, config: Path) -> None:
    if data_dir is not None:
        echo(f"Data kept: `meterline serve --data-dir {data_dir} --config {config}` serves it.")


def _wait_for_signal() -> None:
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
