"""``meterline demo``: run the end-to-end demo (see :mod:`meterline.demo.runner`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Keep the demo's data here (default: a temporary directory)."),
    ] = None,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Keep the server and simulator up until Ctrl-C.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per step.")] = 60.0,
) -> None:
    """Meter a sample app's openai/anthropic calls end to end, on a simulated provider.

    Starts `meterline serve` and the provider simulator on free ports, runs the sample
    app under `meterline instrument`, waits until all usage arrived, prints each
    consumer's bill from the invoice API and checks it against the simulator's ledger.
    No API keys, no money spent.
    """
    from meterline.demo.runner import DemoFailed, run_demo

    # The simulator's start-up line would name a URL the output does not otherwise show.
    logging.getLogger("meterline.simulator").setLevel(logging.WARNING)
    try:
        run_demo(data_dir=data_dir, keep_running=keep_running, timeout=timeout, echo=typer.echo)
    except DemoFailed as exc:
        typer.echo(f"meterline demo failed: {exc}", err=True)
        raise typer.Exit(1) from exc


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the ``meterline`` CLI."""
    app.command("demo")(demo)
