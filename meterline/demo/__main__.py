"""``python -m meterline.demo``: the demo without the rest of the CLI."""

from __future__ import annotations

import typer

from meterline.demo.cli import register

app = typer.Typer(add_completion=False)


@app.callback()
def _root() -> None:
    """meterline's end-to-end demo."""


register(app)

if __name__ == "__main__":
    app()
