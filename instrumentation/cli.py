"""CLI commands of the instrumentation (``meterline instrument``, ``meterline spool``)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the instrumentation's commands to the ``meterline`` CLI."""
