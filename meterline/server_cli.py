"""CLI commands that run or migrate the server: ``serve`` and ``migrate``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the server's commands to the ``meterline`` CLI."""
