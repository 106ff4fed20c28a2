"""The demo's links: requested before they are shown; the overview only once it exists."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from meterline.demo import links as demo_links
from meterline.demo.links import curl_command, key_note, links, request


class _Handler(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, int]] = {}
    seen: ClassVar[list[tuple[str, dict[str, str]]]] = []
    """(path, headers with lower-case names) of each request."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        status = self.routes.get(url.path, 404)
        if url.path == "/" and "query" in parse_qs(url.query):
            status = self.routes.get("/?query", 200)
        body = b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("METERLINE_ADMIN_KEY", "METERLINE_CLICKHOUSE_HTTP_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    _Handler.routes = {"/v1/invoices/acme": 200, "/v1/export": 200, "/docs": 200}
    _Handler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _links(base: str) -> tuple[list[demo_links.Link], list[str]]:
    return links(
        base, base, consumer="acme", period={"period": "2026-12"},
        counted=("2026-12-01", "2027-01-01"),
    )  # fmt: skip


def test_overview_only_once_it_answers(site: str) -> None:
    found, curl = _links(site)
    labels = [link.label for link in found]
    assert labels == ["invoice", "export", "API docs", "ClickHouse"]  # no "/" route: omitted
    assert found[0].url == f"{site}/v1/invoices/acme?period=2026-12"
    assert found[1].url == f"{site}/v1/export?period=2026-12&format=csv"
    assert curl is not None and curl.startswith(f"curl -sG {site}/ --data-urlencode ")
    _Handler.routes["/"] = 200
    found, _ = _links(site)
    assert [link.label for link in found] == ["invoice", "export", "overview", "API docs",
                                              "ClickHouse"]  # fmt: skip


def test_a_required_link_that_fails_shows_its_status(site: str) -> None:
    _Handler.routes["/v1/export"] = 422
    _Handler.routes["/?query"] = 500
    found, curl = _links(site)
    statuses = {link.label: link.status for link in found}
    assert statuses["export"] == 422 and statuses["invoice"] == 200
    assert statuses["ClickHouse query"] == 500 and curl is None


def test_keys_are_sent_and_shown_as_variables(site: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERLINE_ADMIN_KEY", "k-admin,k-old")
    assert request(f"{site}/v1/invoices/acme").status == 200
    assert _Handler.seen[-1][1]["authorization"] == "Bearer k-admin"
    assert request(f"{site}/").status == 404
    headers = _Handler.seen[-1][1]
    # :8123 takes any admin key as its password: the first one is sent
    assert headers["x-clickhouse-user"] == "meterline" and headers["x-clickhouse-key"] == "k-admin"
    # the secret itself is never printed: the command names the variable (its first key)
    assert curl_command(site, "SELECT 1").startswith(
        f'curl -sG -u "meterline:${{METERLINE_ADMIN_KEY%%,*}}" {site}/ '
    )
    assert "k-admin" not in key_note() and "admin key" in key_note()
    monkeypatch.setenv("METERLINE_ADMIN_KEY", "k-admin")
    assert '-u "meterline:$METERLINE_ADMIN_KEY"' in curl_command(site, "SELECT 1")
    monkeypatch.setenv("METERLINE_CLICKHOUSE_HTTP_PASSWORD", "pw")
    assert '-u "meterline:$METERLINE_CLICKHOUSE_HTTP_PASSWORD"' in curl_command(site, "SELECT 1")
    assert request(f"{site}/").status == 404
    assert _Handler.seen[-1][1]["x-clickhouse-key"] == "pw"


def test_open_api_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERLINE_ADMIN_KEY", raising=False)
    assert key_note().startswith("open to anyone on this machine")
