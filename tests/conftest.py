"""Shared fixtures.

chdb opens one data directory per process, so the whole test process shares one
engine path; isolation comes from a fresh *database* per test instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from meterline.store import Store


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
