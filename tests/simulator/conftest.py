"""One simulator on a loopback port for the whole test session; tests isolate their
ledger entries by sequence number (``since``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meterline.simulator import SimulatorConfig, SimulatorServer, start


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorServer]:
    server = start(SimulatorConfig(seed=7, retry_after_ms=20))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def since(sim: SimulatorServer) -> int:
    """The ledger's last sequence number before the test ran."""
    entries = sim.ledger.entries()
    return entries[-1].seq if entries else 0
