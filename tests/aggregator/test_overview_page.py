"""The overview page at ``/``: its data through ``/v1/overview`` (the invoices' money, a
consumer key sees only its consumer), and the page itself in headless Chromium (Debian's
``chromium``; ``.ci/run`` installs it): it renders, shows the seeded consumers with
totals equal to their invoices, logs no console error, and leaves a screenshot under the
test's tmp dir."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
import zoneinfo
from collections.abc import Iterator
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from meterline.aggregator.app import create_app
from meterline.aggregator.rated import ensure_rated
from meterline.settings import ServerSettings
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator._cdp import Browser
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
    for key, status in ((keys.acme_reserve_only, 403), (keys.revoked, 401), (keys.expired, 401),
                        (keys.acme + "x", 401)):  # fmt: skip
        r = client(app, key).get("/v1/overview", params={"period": "2026-03"})
        assert r.status_code == status, (key, r.text)
        assert_no_leak(r.text, "acme")
        assert "acme" not in r.text
    for period in ("2026-03' OR 1=1 --", "2026-03%", "<script>", "2026-3", "", "2026-03-01"):
        r = client(app, keys.acme).get("/v1/overview", params={"period": period})
        assert r.status_code == 422, period
        assert r.headers["content-type"].startswith("application/json")
    # the consumer's budgets list is its own too
    r = client(app, ADMIN).put("/v1/budgets/zz-other", json={"limit": "1.00", "unit": "USD",
                                                            "period": "month"})  # fmt: skip
    assert r.status_code in (200, 201), r.text
    listed = client(app, keys.acme).get("/v1/budgets")
    assert listed.status_code == 200 and listed.json()["budgets"] == []


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


def test_every_page_file_is_typed_and_guarded(store, tmp_path):
    """The static route: a fixed list of files, each with its own type and the page's
    CSP; anything else — traversal in every spelling, the package's own modules, a
    directory — is 404, for any key or none."""
    app = tenant_app(store, tmp_path)
    keys = make_keys(store)
    types = {"/": "text/html", "/page/overview.js": "text/javascript",
             "/page/uPlot.iife.min.js": "text/javascript", "/page/overview.css": "text/css",
             "/page/uPlot.min.css": "text/css"}  # fmt: skip
    for who in (None, keys.acme, ADMIN):
        c = client(app, who)
        for path, media in types.items():
            r = c.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(media), path
            assert r.headers["x-content-type-options"] == "nosniff"
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";")[0]
            assert "frame-ancestors 'none'" in csp
        assert "acme" not in c.get("/").text  # the page holds no data
        for bad in (
            "/page/../app.py",
            "/page/%2e%2e/app.py",
            "/page/..%2fapp.py",
            "/page/%2e%2e%2f%2e%2e%2fpyproject.toml",
            "/page/__init__.py",
            "/page/index.html",
            "/page/uPlot.LICENSE.py",
            "/page/",
            "/page",
            "/page/overview.js%00.py",
            "/page//etc/passwd",
            "/page/..\\app.py",
            "/page/OVERVIEW.JS",
            "/..%2f..%2fetc/passwd",
        ):
            assert c.get(bad).status_code == 404, bad


# --- the page in headless Chromium, one browser for the module ----------------------

_ARTIFACTS = Path(
    os.environ.get("METERLINE_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    b = Browser(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


@contextlib.contextmanager
def _serve(app) -> Iterator[str]:
    import uvicorn

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


def _sign_in(browser: Browser, url: str, key: str, period: str) -> str:
    """Open the page, type ``key`` into its form, wait for ``period``; the DOM."""
    browser.open()
    browser.navigate(url)
    browser.wait_for("!document.getElementById('login').hidden")
    browser.evaluate(f"document.getElementById('key').value = {json.dumps(key)};"
                     "document.getElementById('login').requestSubmit()")  # fmt: skip
    browser.wait_for(f"document.body.dataset.loaded === {json.dumps(period)}")
    return browser.evaluate("document.documentElement.outerHTML")


def _rows(dom: str) -> dict[str, list[str]]:
    parsed = _Rows()
    parsed.feed(dom)
    return parsed.rows


def _get(url: str, key: str, **params: str) -> Any:
    import httpx2

    r = httpx2.get(url, params=params, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_page_in_headless_chromium(browser, store, tmp_path):
    insert_calls(store, [
        Call(utc(2026, 3, 3, 10), consumer="acme", input=1_234_567, output=89_012),
        Call(utc(2026, 3, 17, 9), consumer="acme", input=222_222, output=3_333),
        Call(utc(2026, 3, 9, 23), consumer="globex", input=3_456_789, output=12_345),
        Call(utc(2026, 3, 20), consumer="globex", model="mystery-1", input=500, output=5),
    ])  # fmt: skip
    app = create_app(ServerSettings(config=write_config(tmp_path), admin_key=ADMIN), store)
    with _serve(app) as served:
        dom = _sign_in(browser, f"{served}/?period=2026-03", ADMIN, "2026-03")
        shown = {c: cells[3] for c, cells in _rows(dom).items()}
        assert set(shown) == {"acme", "globex"}
        for consumer, total in shown.items():
            invoice = _get(f"{served}/v1/invoices/{consumer}", ADMIN, period="2026-03")
            assert total == invoice["total"], consumer
        overview = _get(f"{served}/v1/overview", ADMIN, period="2026-03")
        assert browser.evaluate("document.getElementById('total').textContent") == (
            f"{overview['total']} {overview['currency']}"
        )
        assert browser.evaluate("document.getElementById('unpriced-count').textContent") == "1"
        assert browser.evaluate("document.querySelectorAll('.uplot canvas').length") == 2
        assert browser.evaluate("sessionStorage.getItem('meterline.key')") == ADMIN
        assert browser.evaluate("document.cookie") == ""  # the key is never a cookie
        _ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = browser.screenshot(_ARTIFACTS / "overview-page.png")
        assert shot.stat().st_size > 10_000
        # the period picker: another month, then back
        browser.evaluate("document.getElementById('period').value = '2026-04';"
                         "document.getElementById('period-form').requestSubmit()")  # fmt: skip
        browser.wait_for("document.body.dataset.loaded === '2026-04'")
        assert _rows(browser.evaluate("document.documentElement.outerHTML")) == {}
        assert browser.evaluate("location.search") == "?period=2026-04"
        assert browser.errors() == []


HOSTILE = {
    "consumer": '<img src=x onerror="window.__pwned=1">',
    "consumer2": "</td></tr><script>window.__pwned=2</script>",
    "model": "<svg onload=window.__pwned=3>",
    "feature": "<b onmouseover=window.__pwned=4>f</b>",
}


def test_names_are_text_in_the_browser_and_run_nothing(browser, store, tmp_path):
    """Consumer, model and feature names carrying HTML are shown as the text they are:
    no element is made from them and no script of theirs runs (checked in the DOM, so it
    holds whatever the CSP would block)."""
    insert_calls(store, [
        Call(utc(2026, 3, 3, 10), consumer=HOSTILE["consumer"], input=10_000, output=100),
        Call(utc(2026, 3, 4, 10), consumer=HOSTILE["consumer2"], input=20_000, output=100),
        Call(utc(2026, 3, 5, 10), consumer=HOSTILE["consumer"], model=HOSTILE["model"],
             input=500, output=5),
    ])  # fmt: skip
    app = create_app(ServerSettings(config=write_config(tmp_path), admin_key=ADMIN), store)
    c = client(app, ADMIN)
    put = c.put(f"/v1/budgets/{quote(HOSTILE['consumer'], safe='')}",
                params={"feature": HOSTILE["feature"]},
                json={"limit": "5.00", "unit": "USD", "period": "month"})  # fmt: skip
    assert put.status_code in (200, 201), put.text
    with _serve(app) as served:
        dom = _sign_in(browser, f"{served}/?period=2026-03", ADMIN, "2026-03")
        assert browser.evaluate("typeof window.__pwned") == "undefined"
        made = browser.evaluate(
            "document.querySelectorAll('#overview img, #overview svg, #overview script,"
            " #overview b').length"
        )
        assert made == 0
        assert set(_rows(dom)) == {HOSTILE["consumer"], HOSTILE["consumer2"]}
        text = browser.evaluate("document.getElementById('overview').textContent")
        for name in HOSTILE.values():
            assert name in text, name  # shown, as text
        legend = browser.evaluate(
            "[...document.querySelectorAll('.u-legend .u-label')].map(e => e.textContent)"
        )
        assert HOSTILE["consumer"] in legend and HOSTILE["consumer2"] in legend
        assert browser.errors() == []
        # a hostile period in the address is not a month: the page shows this month
        browser.open()
        month = time.strftime("%Y-%m", time.gmtime())
        browser.navigate(f"{served}/?period=%22%3E%3Cimg%20src%3Dx%20onerror%3D"
                         f"window.__pwned%3D5%3E#key={ADMIN}")  # fmt: skip
        browser.wait_for(f"document.body.dataset.loaded === {json.dumps(month)}")
        assert browser.evaluate("typeof window.__pwned") == "undefined"
        assert browser.evaluate("location.hash") == ""  # the key left the address
        assert browser.errors() == []
        # and were HTML ever injected, the page's CSP would refuse its inline script
        browser.evaluate("document.body.insertAdjacentHTML('beforeend',"
                         " '<img src=x onerror=\"window.__pwned=6\">')")  # fmt: skip
        browser.wait_for("document.querySelector('img[src=x]').complete")
        time.sleep(0.2)
        assert browser.evaluate("typeof window.__pwned") == "undefined"
        assert any("Content Security Policy" in json.dumps(e) for e in browser.errors())


def test_the_page_without_an_admin_key_opens_without_asking(browser, store, tmp_path):
    """The open API (loopback, no admin key): no key form, no failed request."""
    insert_calls(store, [Call(utc(2026, 3, 3, 10), consumer="acme", input=10_000, output=10)])
    app = create_app(ServerSettings(config=write_config(tmp_path)), store)
    with _serve(app) as served:
        browser.open()
        browser.navigate(f"{served}/?period=2026-03")
        browser.wait_for("document.body.dataset.loaded === '2026-03'")
        assert set(_rows(browser.evaluate("document.documentElement.outerHTML"))) == {"acme"}
        assert browser.evaluate("document.getElementById('login').hidden") is True
        assert browser.errors() == []


def test_a_consumer_key_in_the_browser_sees_its_own_budgets_in_their_periods(
    browser, store, tmp_path
):
    """A consumer signs in through the form: the page shows only its consumer, and each
    budget's current period in the budget's own time zone, as /v1/budgets computes it."""
    from datetime import UTC, datetime

    from meterline.aggregator.budgets._window import window

    app = tenant_app(store, tmp_path)
    keys = make_keys(store)
    admin = client(app, ADMIN)
    zones = {"acme": ("day", "Asia/Tokyo"), "zz-other": ("month", "America/New_York")}
    for consumer, (period, zone) in zones.items():
        put = admin.put(f"/v1/budgets/{consumer}", json={"limit": "5.00", "unit": "USD",
                                                         "period": period, "timezone": zone})  # fmt: skip
        assert put.status_code in (200, 201), put.text
    with _serve(app) as served:
        dom = _sign_in(browser, f"{served}/?period=2026-03", keys.acme, "2026-03")
        assert set(_rows(dom)) == {"acme"}
        body = browser.evaluate("document.getElementById('overview').outerHTML")
        assert_no_leak(body, "acme")
        when = browser.evaluate(
            "[...document.querySelectorAll('#budgets tr[data-budget] td.when')]"
            ".map(e => e.textContent)"
        )
        [budget] = _get(f"{served}/v1/budgets", keys.acme)["budgets"]
        start, end = (datetime.fromisoformat(budget[k]) for k in ("period_start", "period_end"))
        assert (start, end) == window("day", datetime.now(UTC), "Asia/Tokyo")
        tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
        assert when == [
            f"{start.astimezone(tokyo):%Y-%m-%d %H:%M} – {end.astimezone(tokyo):%Y-%m-%d %H:%M}"
            " Asia/Tokyo"
        ]
        assert start.astimezone(tokyo).hour == 0 and start.hour == 15  # not UTC midnight
        assert browser.errors() == []
