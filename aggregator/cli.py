"""CLI commands of the aggregator (invoices, export, prices). Imports stay light."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the aggregator's commands to the ``meterline`` CLI."""
