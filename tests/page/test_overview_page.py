"""The overview page at ``/``: the real app on a loopback port, rendered by Debian's
headless Chromium; its numbers must equal ``/v1/invoices`` to the cent.

Chromium runs JavaScript (Chart.js draws the charts), so a script error shows up as a
``CONSOLE`` / ``Uncaught`` line on its stderr. Skips only when chromium is not installed.
"""

from __future__ import annotations

import html
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from meterline.aggregator.app import create_app
from meterline.aggregator.auth import KEY_COOKIE
from meterline.settings import ServerSettings
from meterline.store import Store
from tests.aggregator._calls import Call, insert_calls, utc
from tests.aggregator._tenants import ADMIN_KEYS, NAMED, TENANTS, make_keys, tenant_calls
from tests.aggregator.pricing_config import CONFIG_YAML, write_config

PERIOD = "2026-03"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BUDGETS_YAML = """
budgets:
  limits:
    - {consumer: acme, limit: "5.00", unit: USD, period: total}
    - {consumer: zz-other, limit: "1000000", unit: tokens, period: total}
"""


@dataclass
class Served:
    url: str
    store: Store


def _serve(store: Store, tmp_path: Path, admin_key: str | None) -> Iterator[Served]:
    import uvicorn

    config = write_config(tmp_path, CONFIG_YAML + BUDGETS_YAML)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ServerSettings(config=config, admin_key=admin_key)
    app = create_app(settings, store, address=("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield Served(f"http://127.0.0.1:{port}", store)
    finally:
        server.should_exit = True
        thread.join(10)


def _seed(store: Store) -> None:
    calls = tenant_calls()
    # usage on the month's first and last hour (boundaries) and outside the month
    calls += [
        Call(utc(2026, 3, 1, 0), consumer="acme", model="gpt-4o", input=1_000_001, output=3),
        Call(utc(2026, 3, 31, 23, 59), consumer="acme", model="o3", input=77_777, output=9),
        Call(utc(2026, 2, 28, 23, 59), consumer="acme", model="gpt-4o", input=9_999_999),
        Call(utc(2026, 4, 1, 0), consumer="zz-other", model="gpt-4o", input=8_888_888),
    ]
    insert_calls(store, calls)


@pytest.fixture
def open_server(store: Store, tmp_path: Path) -> Iterator[Served]:
    _seed(store)
    yield from _serve(store, tmp_path, None)


@pytest.fixture
def keyed_server(store: Store, tmp_path: Path) -> Iterator[Served]:
    _seed(store)
    yield from _serve(store, tmp_path, ",".join(ADMIN_KEYS))


def _chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    command = [
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=10000", *extra, url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if ("CONSOLE" in line and "ERROR" in line.upper()) or "Uncaught" in line
    ]


def _invoice(served: Served, consumer: str, key: str | None = None) -> dict:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    quoted = urllib.parse.quote(consumer, safe="")
    r = httpx.get(f"{served.url}/v1/invoices/{quoted}?period={PERIOD}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _table_rows(dom: str, table: str) -> list[list[str]]:
    body = dom.split(f'<table id="{table}">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>", 1)[1], re.S)
    return [
        [
            html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)
        ]
        for r in rows
    ]


def _copy_artifact(path: Path) -> None:
    artifacts = Path(__file__).resolve().parents[2] / "artifacts"
    if artifacts.is_dir():
        shutil.copy(path, artifacts / path.name)


def test_page_renders_the_invoices_totals_in_chromium(open_server: Served, tmp_path: Path) -> None:
    url = f"{open_server.url}/?period={PERIOD}"
    run = _chromium(url, tmp_path, "--dump-dom")
    dom = run.stdout
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_errors(run.stderr) == [], _console_errors(run.stderr)
    # Chart.js ran: it sizes the canvases it draws into
    assert re.search(r'<canvas id="by-consumer"[^>]*style="[^"]*height', dom), dom[:2000]
    rows = {r[0]: r for r in _table_rows(dom, "consumers")}
    expected = {c or "(unattributed)": _invoice(open_server, c) for c in TENANTS}
    assert set(rows) == set(expected)
    for name, invoice in expected.items():
        row = rows[name]
        assert row[1:4] == [invoice["subtotal"], invoice["markup"], invoice["total"]], name
        assert int(row[4]) == sum(u["requests"] for u in invoice["unpriced"])
    # acme: the month's first and last hour are in, the neighbouring months' usage is not
    assert rows["acme"][3] == _invoice(open_server, "acme")["total"]
    grand_total = sum(Decimal(i["total"]) for i in expected.values())
    assert dom.split('id="grand-total">', 1)[1].split("<", 1)[0] == format(grand_total, "f")
    unpriced = _table_rows(dom, "unpriced")
    assert {(r[0], r[2]) for r in unpriced} == {
        (c or "(unattributed)", "mystery-1") for c in TENANTS
    }
    budgets = {r[0]: r for r in _table_rows(dom, "budgets")}
    state = httpx.get(f"{open_server.url}/v1/budgets/acme").json()
    assert budgets["acme"][4] == state["spent"] and Decimal(state["spent"]) > 0
    assert budgets["acme"][6].endswith("%")
    assert set(budgets) == {"acme", "zz-other"}
    links = re.findall(r'href="(/v1/[^"]+)"', dom)
    assert f"/v1/invoices/acme?period={PERIOD}" in links
    assert f"/v1/invoices/{urllib.parse.quote('beta corp/é', safe='')}?period={PERIOD}" in links
    assert f"/v1/export?period={PERIOD}&amp;format=csv" in links
    for link in links:  # every link opens
        r = httpx.get(open_server.url + html.unescape(link))
        assert r.status_code == 200, (link, r.text[:200])

    shot = tmp_path / "overview.png"
    run = _chromium(url, tmp_path, f"--screenshot={shot}", "--window-size=1280,1800")
    assert shot.is_file() and shot.stat().st_size > 10_000, run.stderr[-2000:]
    assert _console_errors(run.stderr) == []
    _copy_artifact(shot)


def test_period_picker_and_default_month(open_server: Served, tmp_path: Path) -> None:
    """Another month shows that month's invoices; no period is the current UTC month."""
    april = httpx.get(f"{open_server.url}/?period=2026-04").text
    assert 'value="2026-04"' in april
    rows = {r[0]: r for r in _table_rows(april, "consumers")}
    assert set(rows) == {"zz-other"}
    r = httpx.get(f"{open_server.url}/v1/invoices/zz-other?period=2026-04")
    assert rows["zz-other"][3] == r.json()["total"]
    from datetime import UTC, datetime

    now = datetime.now(UTC).strftime("%Y-%m")
    assert f'value="{now}"' in httpx.get(f"{open_server.url}/").text
    assert httpx.get(f"{open_server.url}/?period=2026-13").status_code == 422


def test_a_key_is_needed_and_a_consumer_key_sees_its_own(
    keyed_server: Served, tmp_path: Path
) -> None:
    url = keyed_server.url
    keys = make_keys(keyed_server.store)
    anonymous = httpx.get(f"{url}/?period={PERIOD}")
    assert anonymous.status_code == 401 and 'action="/login"' in anonymous.text
    assert "acme" not in anonymous.text

    bad = httpx.post(f"{url}/login", data={"key": "nope", "period": PERIOD})
    assert bad.status_code == 401 and KEY_COOKIE not in bad.headers.get("set-cookie", "")
    for gone in (keys.revoked, keys.expired):
        assert httpx.post(f"{url}/login", data={"key": gone}).status_code == 401
    reserve_only = httpx.post(f"{url}/login", data={"key": keys.acme_reserve_only})
    assert reserve_only.status_code == 403
    forged = httpx.post(
        f"{url}/login", data={"key": keys.acme}, headers={"origin": "http://127.0.0.1:1"}
    )
    assert forged.status_code == 403 and "set-cookie" not in forged.headers

    with httpx.Client(base_url=url) as browser:
        r = browser.post("/login", data={"key": keys.acme, "period": PERIOD})
        assert r.status_code == 303 and r.headers["location"] == f"/?period={PERIOD}"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = browser.get(f"/?period={PERIOD}")
        assert page.status_code == 200
        rows = {r[0]: r for r in _table_rows(page.text, "consumers")}
        assert set(rows) == {"acme"}
        assert rows["acme"][3] == _invoice(keyed_server, "acme", keys.acme)["total"]
        for other in NAMED:
            if other != "acme":
                assert other not in page.text
                assert str(TENANTS[other]) not in page.text
        assert {r[0] for r in _table_rows(page.text, "budgets")} == {"acme"}
        # the cookie opens the invoice link, not another consumer's, and changes nothing
        assert browser.get(f"/v1/invoices/acme?period={PERIOD}").status_code == 200
        other = browser.get(f"/v1/invoices/zz-other?period={PERIOD}")
        assert other.status_code in (403, 404)
        export = browser.get(f"/v1/export?period={PERIOD}&format=json")
        assert export.status_code == 200 and "zz-other" not in export.text
        assert browser.post(f"/v1/periods/{PERIOD}/finalize?allow_open=true").status_code == 401
        # signing out ends the session
        browser.post("/logout")
        assert browser.get(f"/?period={PERIOD}").status_code == 401

    with httpx.Client(base_url=url) as admin:
        admin.post("/login", data={"key": ADMIN_KEYS[1]})
        rows = {r[0]: r for r in _table_rows(admin.get(f"/?period={PERIOD}").text, "consumers")}
        assert set(rows) == {c or "(unattributed)" for c in TENANTS}


def test_page_numbers_come_from_the_rated_month(open_server: Served, tmp_path: Path) -> None:
    """Usage arriving after a first view shows on the next (the month is rated again)."""
    before = {
        r[0]: r
        for r in _table_rows(httpx.get(f"{open_server.url}/?period={PERIOD}").text, "consumers")
    }
    insert_calls(open_server.store, [Call(utc(2026, 3, 15), consumer="acme", input=4_000_000)])
    after = {
        r[0]: r
        for r in _table_rows(httpx.get(f"{open_server.url}/?period={PERIOD}").text, "consumers")
    }
    assert after["acme"][3] != before["acme"][3]
    assert after["acme"][3] == _invoice(open_server, "acme")["total"]
