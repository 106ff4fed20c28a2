"""The overview page at ``/``: its data through ``/v1/overview`` (the invoices' money, a
consumer key sees only its consumer), and the page itself in headless Chromium (Debian's
``chromium``; ``.ci/run`` installs it): it renders, shows the seeded consumers with
totals equal to their invoices, logs no console error, and leaves a screenshot under the
test's tmp dir."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from meterline.aggregator.app import create_app
from meterline.aggregator.rated import ensure_rated
from meterline.settings import ServerSettings
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator._tenants import (
    ADMIN_KEYS,
    NAMED,
    assert_no_leak,
    client,
    make_keys,
    tenant_app,
)
from tests.aggregator.pricing_config import write_config

ADMIN = ADMIN_KEYS[0]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _invoice_totals(c, consumers) -> dict[str, str]:
    return {
        name: c.get(
            "/v1/invoices/" + name.replace("/", "%2F"), params={"period": "2026-03"}
        ).json()["total"]
        for name in consumers
    }


def test_overview_is_the_invoices_money_per_consumer_and_day(store, tmp_path):
    app = tenant_app(store, tmp_path)
    a = client(app, ADMIN)
    body = a.get("/v1/overview", params={"period": "2026-03"}).json()
    names = [c["consumer"] for c in body["consumers"]]
    assert sorted(names) == sorted(["", *NAMED])
    totals = _invoice_totals(a, names)
    assert {c["consumer"]: c["total"] for c in body["consumers"]} == totals
    assert [Decimal(c["total"]) for c in body["consumers"]] == sorted(
        (Decimal(t) for t in totals.values()), reverse=True
    )  # largest first
    assert Decimal(body["total"]) == sum(Decimal(t) for t in totals.values())
    assert body["unpriced_requests"] == 5  # one mystery-1 call each
    assert {u["model"] for u in body["unpriced"]} == {"mystery-1"}
    assert len(body["days"]) == 31 and body["days"][2] == "2026-03-03"
    acme_day = Decimal(body["by_consumer"]["acme"][2])
    # all of acme's billed usage is on the 3rd: the exact sum, rounded once, differs from the
    # invoice (rounded per line, then the markup) by at most a cent per line and one more
    assert abs(acme_day - Decimal(totals["acme"])) <= Decimal("0.03")
    assert sum(Decimal(v) for v in body["by_model"]["openai/gpt-4o"]) > 0


def test_overview_from_the_rated_table_equals_on_the_fly(store, tmp_path):
    app = tenant_app(store, tmp_path)
    a = client(app, ADMIN)
    fly = a.get("/v1/overview", params={"period": "2026-03"}).json()  # months not rated
    from meterline.aggregator.invoices import load_store_pricing

    ensure_rated(store, load_store_pricing(store, write_config(tmp_path)))
    assert a.get("/v1/overview", params={"period": "2026-03"}).json() == fly


def test_a_consumer_key_sees_only_its_consumer(store, tmp_path):
    app = tenant_app(store, tmp_path)
    keys = make_keys(store)
    r = client(app, keys.acme).get("/v1/overview", params={"period": "2026-03"})
    assert r.status_code == 200
    assert [c["consumer"] for c in r.json()["consumers"]] == ["acme"]
    assert set(r.json()["by_consumer"]) == {"acme"}
    assert_no_leak(r.text, "acme")
    assert client(app).get("/v1/overview", params={"period": "2026-03"}).status_code == 401
    bad = client(app, ADMIN).get("/v1/overview", params={"period": "2026-13"})
    assert bad.status_code == 422


def test_the_page_holds_no_data_and_serves_only_its_files(store, tmp_path):
    app = tenant_app(store, tmp_path)
    anyone = client(app)
    page = anyone.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "acme" not in page.text
    assert anyone.get("/page/uPlot.iife.min.js").status_code == 200
    for bad in ("/page/../app.py", "/page/index.html.bak", "/page/%2e%2e%2fapp.py"):
        assert anyone.get(bad).status_code == 404, bad


@pytest.fixture
def served(store, tmp_path) -> Iterator[str]:
    import uvicorn

    insert_calls(store, [
        Call(utc(2026, 3, 3, 10), consumer="acme", input=1_234_567, output=89_012),
        Call(utc(2026, 3, 17, 9), consumer="acme", input=222_222, output=3_333),
        Call(utc(2026, 3, 9, 23), consumer="globex", input=3_456_789, output=12_345),
        Call(utc(2026, 3, 20), consumer="globex", model="mystery-1", input=500, output=5),
    ])  # fmt: skip
    settings = ServerSettings(config=write_config(tmp_path), admin_key=ADMIN)
    app = create_app(settings, store)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with the flags that keep it off the (closed) network."""
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-extensions", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000",
         "--window-size=1280,1800", *extra, url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


class _Rows(HTMLParser):
    """The ``consumers`` table: consumer → total, from the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self._row: str | None = None
        self._cell: list[str] | None = None
        self.loaded: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.loaded = a.get("data-loaded")
        if tag == "tr" and "data-consumer" in a:
            self._row = a["data-consumer"] or ""
            self.rows[self._row] = []
        if tag == "td" and self._row is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self.rows[self._row].append("".join(self._cell))
            self._cell = None
        if tag == "tr":
            self._row = None


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run)")
def test_the_page_in_headless_chromium(served, tmp_path):
    url = f"{served}/?period=2026-03#key={ADMIN}"
    dom = _chromium(url, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _Rows()
    parsed.feed(dom.stdout)
    assert parsed.loaded == "2026-03", dom.stdout[-2000:]
    shown = {c: cells[3] for c, cells in parsed.rows.items()}
    assert set(shown) == {"acme", "globex"}
    import httpx2

    for consumer, total in shown.items():
        invoice = httpx2.get(f"{served}/v1/invoices/{consumer}", params={"period": "2026-03"},
                             headers={"authorization": f"Bearer {ADMIN}"}).json()  # fmt: skip
        assert total == invoice["total"], consumer
    assert "uplot" in dom.stdout  # the charts were drawn
    errors = [
        line for line in dom.stderr.splitlines()
        if "CONSOLE" in line and re.search(r"error|Uncaught", line, re.I)
    ]  # fmt: skip
    assert errors == []
    shot = tmp_path / "overview.png"
    taken = _chromium(url, tmp_path / "profile2", f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
