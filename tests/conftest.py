"""Shared fixtures.

chdb opens one data directory per process, so the whole test process shares one
engine path; isolation comes from a fresh *database* per test instead.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests._redis import redis_url  # noqa: F401  (the fixture, for every module)

if TYPE_CHECKING:
    from meterline.store import Store


def pytest_configure(config: pytest.Config) -> None:
    """Give the apps the tests start the signal dispositions a shell gives them.

    pytest-xdist's workers ignore SIGINT, and an ignored signal stays ignored across
    ``exec``: every app a worker started would ignore Ctrl-C, and meterline rightly keeps
    an ignored signal ignored, so the stop tests would test the wrong thing.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(
                sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler
            )


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chdb data directory of this test process."""
    return tmp_path_factory.mktemp("chdb")


def migrated_store(engine_dir: Path, prefix: str) -> Iterator[Store]:
    """Yield a migrated store in a new database ``prefix_<random>``; drop it afterwards."""
    pytest.importorskip("chdb")
    from meterline.store import open_store

    s = open_store(data_dir=engine_dir, database=f"{prefix}_{uuid.uuid4().hex[:12]}")
    s.migrate()
    try:
        yield s
    finally:
        s.command("DROP DATABASE IF EXISTS {db}")


@pytest.fixture
def store(engine_dir: Path) -> Iterator[Store]:
    """A migrated store in a database of its own."""
    yield from migrated_store(engine_dir, "t")
