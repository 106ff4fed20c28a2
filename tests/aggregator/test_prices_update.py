"""``prices update``: a clear error when the host is unreachable; when it answers, the
fetched prices are stored, the changes reported, and later ratings use them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
    body = json.dumps(PUBLISHED).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/data.json":
                self.send_error(404)
                return
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


def test_api_update(store: Store, published: str) -> None:
    client = TestClient(create_app(ServerSettings(), store))
    client.headers["content-type"] = "application/json"  # the open API's guard
    bad = client.post("/v1/prices/update", params={"url": "http://127.0.0.1:9/x.json"})
    assert bad.status_code == 502 and "prices unchanged" in bad.json()["detail"]
    before = client.get("/v1/prices", params={"provider": "openai", "model": "gpt-4o"}).json()
    assert before["prices"][0]["per_million_tokens"]["input"] == "2.5"
    ok = client.post("/v1/prices/update", params={"url": published + "/data.json"})
    assert ok.status_code == 200 and ok.json()["changes"]
    after = client.get("/v1/prices", params={"provider": "openai", "model": "gpt-4o"}).json()
    assert after["prices"][0]["per_million_tokens"]["input"] == "3"
