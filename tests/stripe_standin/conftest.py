"""A stand-in per test, reached only through the official ``stripe`` SDK (and raw httpx
for requests the SDK would never send)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

stripe = pytest.importorskip("stripe")

from meterline.stripe_standin import StandinConfig, StandinServer  # noqa: E402

CUSTOMERS = ("cus_acme", "cus_globex")
METERS = ("llm_input_tokens", "llm_output_tokens")


@pytest.fixture
def make_standin() -> Iterator[Callable[..., StandinServer]]:
    servers: list[StandinServer] = []

    def make(**config: Any) -> StandinServer:
        config.setdefault("customers", CUSTOMERS)
        config.setdefault("meters", METERS)
        server = StandinServer(StandinConfig(**config)).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def fake(make_standin: Callable[..., StandinServer]) -> StandinServer:
    return make_standin()


def client_for(server: StandinServer, key: str | None = None, **kwargs: Any) -> Any:
    return stripe.StripeClient(
        key or server.api_key, base_addresses=server.base_addresses, **kwargs
    )


@pytest.fixture
def client(fake: StandinServer) -> Any:
    return client_for(fake)


def event(
    value: str = "100",
    *,
    identifier: str | None = None,
    customer: str = "cus_acme",
    event_name: str = "llm_input_tokens",
    **extra: Any,
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "event_name": event_name,
        "payload": {"stripe_customer_id": customer, "value": value},
        **extra,
    }
    if identifier is not None:
        params["identifier"] = identifier
    return params
