"""``meterline config check FILE``: validate a configuration file without starting anything."""

from __future__ import annotations

from typing import Annotated

import typer

config_app = typer.Typer(help="The configuration file.", no_args_is_help=True)


@config_app.command("check")
def check(
    file: Annotated[str, typer.Argument(help="The YAML configuration file.", show_default=False)],
) -> None:
    """Validate FILE as `serve --config FILE` would: exit 0 with a summary, or 2 and why."""
    from meterline.config import ConfigError, load_config

    try:
        config = load_config(file)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{file}: valid ({config.summary()})")


def register(app: typer.Typer) -> None:
    """Add ``config check`` to the ``meterline`` CLI."""
    app.add_typer(config_app, name="config")
