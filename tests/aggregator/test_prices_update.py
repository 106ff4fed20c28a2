"""``prices update``: a clear error when the host is unreachable; when it answers, the
fetched prices are stored, the changes reported, and later ratings use them. It fetches
only from the configuration's ``catalogue.url``: no request can name another URL."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from meterline.aggregator.app import create_app
from meterline.aggregator.invoices import (
    PriceUpdateError,
    load_store_pricing,
    stored_catalogue,
    update_catalogue,
)
from meterline.aggregator.pricing import Catalogue
from meterline.settings import ServerSettings
from meterline.store import Store

PUBLISHED = [
    {
        "id": "openai",
        "name": "OpenAI",
        "api_pattern": r"https://api\.openai\.com",
        "models": [
            {"id": "gpt-4o", "match": {"equals": "gpt-4o"},
             "prices": {"input_mtok": "3", "cache_read_mtok": "1.5", "output_mtok": "12"}},
        ],
    }
]  # fmt: skip


@pytest.fixture
def published() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/data.json":
                self.send_error(404)
                return
            body = json.dumps(PUBLISHED).encode()  # read now: a test may change it
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_host_changes_nothing(store: Store) -> None:
    with pytest.raises(PriceUpdateError, match=r"cannot fetch prices from http://127\.0\.0\.1:9/"):
        update_catalogue(store, Catalogue.bundled(), url="http://127.0.0.1:9/x.json", timeout=2)
    assert stored_catalogue(store) is None


def test_a_price_finer_than_the_rated_table_is_refused(
    store: Store, published: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A published price with more than 24 decimals would be rounded in rated_usage: the
    update is refused with one line naming it, and nothing is stored."""
    fine = json.loads(json.dumps(PUBLISHED))
    fine[0]["models"][0]["prices"]["cache_read_mtok"] = "1." + "0" * 27 + "1"
    monkeypatch.setitem(PUBLISHED[0], "models", fine[0]["models"])
    with pytest.raises(PriceUpdateError) as caught:
        update_catalogue(store, None, url=published + "/data.json")
    assert str(caught.value) == (
        f"{published}/data.json: openai/gpt-4o cache_read_mtok 1.{'0' * 27}1 has more than 24"
        " decimals (the rated-usage table holds prices to 24); not loaded; prices unchanged"
    )
    assert stored_catalogue(store) is None


def test_not_genai_prices_data(store: Store, published: str) -> None:
    with pytest.raises(PriceUpdateError, match="404"):
        update_catalogue(store, None, url=published + "/missing.json")


def test_update_stores_reports_and_applies(store: Store, published: str) -> None:
    result = update_catalogue(store, Catalogue.bundled(), url=published + "/data.json")
    changed = {(c.provider, c.model): c for c in result.changes}
    gpt4o = changed[("openai", "gpt-4o")]
    assert gpt4o.before["always"]["per_million_tokens"]["input"] == "2.5"
    assert gpt4o.after == {"always": {"per_million_tokens": {"input": "3", "cache_read": "1.5",
                                                             "output": "12"}, "tiers": []}}  # fmt: skip
    assert changed[("anthropic", "claude-opus-4-0")].after is None  # not in the fetched data
    pricing = load_store_pricing(store, None)
    assert pricing.catalogue.source.startswith(published)
    match = pricing.book.match("openai", "gpt-4o", "", datetime(2026, 3, 1, tzinfo=UTC))
    assert match.prices.per_million_tokens["input"] == Decimal("3")


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "meterline.yaml"
    path.write_text(f"catalogue:\n  url: {url}\n", encoding="utf-8")
    return path


@pytest.fixture
def attacker() -> Iterator[list[str]]:
    """A server that records every request it gets (a URL an API caller would name)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = json.dumps(PUBLISHED).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        seen.append(f"http://127.0.0.1:{server.server_address[1]}")
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def test_api_update_fetches_from_the_configured_source(
    store: Store, published: str, tmp_path: Path
) -> None:
    settings = ServerSettings(config=_config(tmp_path, published + "/data.json"))
    client = TestClient(create_app(settings, store))
    client.headers["content-type"] = "application/json"  # the open API's guard
    before = client.get("/v1/prices", params={"provider": "openai", "model": "gpt-4o"}).json()
    assert before["prices"][0]["per_million_tokens"]["input"] == "2.5"
    ok = client.post("/v1/prices/update")
    assert ok.status_code == 200 and ok.json()["changes"]
    assert ok.json()["source"] == published + "/data.json"
    after = client.get("/v1/prices", params={"provider": "openai", "model": "gpt-4o"}).json()
    assert after["prices"][0]["per_million_tokens"]["input"] == "3"


def test_api_unreachable_configured_source(store: Store, tmp_path: Path) -> None:
    settings = ServerSettings(config=_config(tmp_path, "http://127.0.0.1:9/x.json"))
    bad = TestClient(create_app(settings, store)).post(
        "/v1/prices/update", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 502 and "prices unchanged" in bad.json()["detail"]
    assert "http://127.0.0.1:9/x.json" in bad.json()["detail"]


@pytest.mark.parametrize(
    "how",
    [
        {"params": {"url": "{u}/data.json"}},
        {"params": {"source": "{u}/data.json"}},
        {"json": {"url": "{u}/data.json"}},
        {"data": {"url": "{u}/data.json"}},
        {"params": {"URL": "{u}/data.json"}},
    ],
)
def test_a_request_cannot_name_the_source(
    store: Store, published: str, attacker: list[str], tmp_path: Path, how: dict
) -> None:
    """Whatever a caller sends, the server fetches only from ``catalogue.url``."""
    base = attacker[0]
    kwargs = {k: {n: v.format(u=base) for n, v in d.items()} for k, d in how.items()}
    settings = ServerSettings(config=_config(tmp_path, published + "/data.json"))
    client = TestClient(create_app(settings, store))
    client.headers["content-type"] = "application/json"  # the open API's guard
    answer = client.post("/v1/prices/update", **kwargs)
    assert answer.status_code == 422, answer.text
    assert "catalogue.url" in answer.json()["detail"]
    assert attacker[1:] == []  # the named host was never asked
    assert stored_catalogue(store) is None


def test_default_source_is_genai_prices(store: Store) -> None:
    from meterline.aggregator.pricing import DEFAULT_CATALOGUE_URL, parse_pricing_config

    assert parse_pricing_config({}).catalogue_url == DEFAULT_CATALOGUE_URL
    assert DEFAULT_CATALOGUE_URL.startswith(
        "https://raw.githubusercontent.com/pydantic/genai-prices/"
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"url": "file:///etc/passwd"}, "is not an http(s) URL"),
        ({"url": "ftp://example.com/data.json"}, "is not an http(s) URL"),
        ({"url": 5}, "is not an http(s) URL"),
        ({"href": "https://example.com/"}, "unknown key `href`: allowed: url"),
        ("https://example.com/", "expected a mapping"),
    ],
)
def test_bad_catalogue_section(section: object, message: str) -> None:
    from meterline.aggregator.pricing import PricingConfigError, parse_pricing_config

    with pytest.raises(PricingConfigError, match=re.escape(message)):
        parse_pricing_config({"catalogue": section})
