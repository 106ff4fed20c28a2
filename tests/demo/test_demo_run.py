"""``meterline demo`` as a person runs it: a subprocess, its output parsed.

Two demos run at once (one module-scoped fixture): one that stops, one with
``--keep-running``. The printed bill is compared, figure for figure, with the invoice
JSON the running demo's API serves, and with invoice rounding computed here from the
printed quantity and unit price; the ledger check, the unpriced, failed and markup lines
must be there; URLs appear only while serving, and each one answers 200 (the curl
example included).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

MAX_LINES = 40
LAST_LINE = re.compile(r"^Serving until Ctrl-C")


@dataclass
class Run:
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return (self.out + self.err).splitlines()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METERLINE_"))}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "meterline", "demo", *args]


def _read_until(proc: subprocess.Popen[str], pattern: re.Pattern[str], timeout: float) -> str:
    """Lines of ``proc``'s stdout up to the first matching ``pattern`` (a reader thread:
    ``select`` on a buffered pipe misses lines already read into the buffer)."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None and lines.empty():
                break
            continue
        out.append(line)
        if pattern.match(line):
            return "".join(out)
    raise AssertionError("the demo did not print its links:\n" + "".join(out))


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, Run]]:
    """(a demo that stopped, a demo still serving); the second gets Ctrl-C at the end."""
    pytest.importorskip("chdb")
    kw: dict[str, Any] = {"text": True, "env": _env(), "stdout": subprocess.PIPE}
    serving_err = tmp_path_factory.mktemp("demo") / "stderr"
    with serving_err.open("w") as err_file:
        serving = subprocess.Popen(_command("--keep-running"), stderr=err_file, **kw)
    stopped = subprocess.Popen(_command(), stderr=subprocess.PIPE, **kw)
    try:
        out, err = stopped.communicate(timeout=120)
        assert stopped.returncode == 0, out + err
        served = _read_until(serving, LAST_LINE, timeout=120)
        yield Run(out, err), Run(served, serving_err.read_text())
        serving.send_signal(signal.SIGINT)
        serving.wait(timeout=60)
        err = serving_err.read_text()
        assert serving.returncode == 0, err
        assert "Traceback" not in err, err
    finally:
        for proc in (serving, stopped):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


URL = re.compile(r"https?://[^\s'\"]+")


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def _api(run: Run) -> str:
    invoice = next(u for u in URL.findall(run.out) if "/v1/invoices/" in u)
    return invoice.split("/v1/")[0]


def _period(run: Run) -> str:
    invoice = next(u for u in URL.findall(run.out) if "/v1/invoices/" in u)
    return urllib.parse.parse_qs(urllib.parse.urlsplit(invoice).query)["period"][0]


@dataclass
class Bill:
    rows: list[tuple[str, str, str, str, str]]
    """(model, token type, tokens, unit price, amount)."""
    totals: str
    notes: list[str]


def _bills(run: Run) -> dict[str, Bill]:
    """The printed bill, by consumer: line items, totals line, not-billed notes."""
    lines = run.out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["consumer", "model"])
    bills: dict[str, Bill] = {}
    consumer = model = ""
    for line in lines[head + 1 :]:
        if not line.strip():
            break
        if line.strip().startswith("subtotal"):
            bills[consumer].totals = line.strip()
        elif line.strip().startswith("not billed"):
            bills[consumer].notes.append(line.strip())
        else:
            cells = line.split()
            if not line.startswith(" "):
                consumer = cells.pop(0)
                bills[consumer] = Bill([], "", [])
            if len(cells) == 5:
                model = cells.pop(0)
            assert len(cells) == 4, line
            bills[consumer].rows.append((model, *cells))  # type: ignore[arg-type]
    return bills


@pytest.fixture(scope="module")
def invoices(demos: tuple[Run, Run]) -> dict[str, dict[str, Any]]:
    """The serving demo's invoices, from its API (period as printed)."""
    run = demos[1]
    api, period = _api(run), _period(run)
    found = {}
    for consumer in _bills(run):
        status, text = _get(f"{api}/v1/invoices/{consumer}?period={period}")
        assert status == 200
        found[consumer] = json.loads(text)
    return found


def test_output_fits_a_screen(demos: tuple[Run, Run]) -> None:
    for run in demos:
        assert 20 <= len(run.lines) <= MAX_LINES, "\n".join(run.lines)
    stopped = demos[0]
    assert not stopped.err.strip(), stopped.err  # nothing logged on stderr


def test_printed_bill_is_the_invoice_json(
    demos: tuple[Run, Run], invoices: dict[str, dict[str, Any]]
) -> None:
    bills = _bills(demos[1])
    assert set(bills) == {"acme", "globex", "initech"}
    for consumer, bill in bills.items():
        invoice = invoices[consumer]
        expected = [
            (line["model"], line["token_type"], f"{line['quantity']:,}",
             line["unit_price_per_million"], line["amount"])
            for line in invoice["lines"]
        ]  # fmt: skip
        assert bill.rows == expected
        for _, _, tokens, price, amount in bill.rows:
            # rounded as invoices are: exact quantity × price / 1e6, half-up to the cent
            exact = Decimal(tokens.replace(",", "")) * Decimal(price) / Decimal(1_000_000)
            assert amount == str(exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
        assert bill.totals.startswith(f"subtotal {invoice['subtotal']} ")
        assert bill.totals.endswith(f"= total {invoice['total']} USD")
    # some line is billed at more than a cent: the demo's bill is not all zeros
    assert any(Decimal(i["total"]) >= Decimal("0.05") for i in invoices.values())


def test_stopped_and_serving_demos_print_the_same_bill(demos: tuple[Run, Run]) -> None:
    stopped, serving = _bills(demos[0]), _bills(demos[1])
    assert stopped == serving


def test_markup_line(demos: tuple[Run, Run], invoices: dict[str, dict[str, Any]]) -> None:
    bills = _bills(demos[1])
    markup = invoices["acme"]["markup"]
    assert Decimal(markup) > 0, "the demo's plan markup must show as an amount"
    assert f"+ markup 20% {markup} =" in bills["acme"].totals
    assert all("markup" not in bills[c].totals for c in ("globex", "initech"))


def test_unpriced_and_failed_lines(
    demos: tuple[Run, Run], invoices: dict[str, dict[str, Any]]
) -> None:
    bills = _bills(demos[1])
    [unpriced] = invoices["acme"]["unpriced"]
    tokens = sum(unpriced["quantities"].values())
    assert bills["acme"].notes == [
        f"not billed, unpriced: {unpriced['model']} ({unpriced['requests']} call, {tokens} "
        "tokens): no price; add a `models` entry"
    ]
    failed = invoices["initech"]["failed"]
    assert invoices["initech"]["failed_requests"] == 3
    assert [n.split(":")[0] for n in bills["initech"].notes] == ["not billed, failed"]
    assert "(3 calls, 0 tokens)" in bills["initech"].notes[0]
    assert {f["model"] for f in failed} <= set(bills["initech"].notes[0].split())


def test_ledger_check_line(demos: tuple[Run, Run], invoices: dict[str, dict[str, Any]]) -> None:
    for run in demos:
        [line] = [x for x in run.lines if x.startswith("Ledger check:")]
        found = re.fullmatch(
            r"Ledger check: /v1/usage and the invoices match the simulator's ledger: "
            r"(\d+) calls \((\d+) failed\), ([\d,]+) tokens",
            line,
        )
        assert found, line
        assert int(found.group(1)) == 17 and int(found.group(2)) == 3
    tokens = 0
    for invoice in invoices.values():
        tokens += sum(line["quantity"] for line in invoice["lines"])
        for entry in invoice["unpriced"] + invoice["failed"]:
            tokens += entry["input_tokens"] + entry["output_tokens"]
    assert int(found.group(3).replace(",", "")) == tokens


def test_no_urls_once_stopped(demos: tuple[Run, Run]) -> None:
    stopped = demos[0]
    assert not URL.findall(stopped.out + stopped.err), stopped.out
    assert "127.0.0.1" not in stopped.out + stopped.err
    assert "--keep-running" in stopped.out


def test_every_printed_url_answers_while_serving(demos: tuple[Run, Run]) -> None:
    serving = demos[1]
    urls = URL.findall(serving.out)
    labels = {line.split()[0] for line in serving.out.splitlines() if URL.search(line)}
    assert {"invoice", "export", "ClickHouse", "curl", "API"} <= labels, serving.out
    period = _period(serving)
    assert any(u.endswith(f"/v1/export?period={period}&format=csv") for u in urls)
    for url in urls:
        assert _get(url)[0] == 200, url
    # the curl example, run by a shell as printed
    lines = serving.out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("curl "))
    command = lines[start]
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    for consumer in ("acme", "globex", "initech"):
        assert consumer in table
