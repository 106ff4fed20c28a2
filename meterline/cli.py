"""The ``meterline`` command line.

Each part of the product registers its own commands (``register(app)`` in
``meterline.instrumentation.cli``, ``meterline.aggregator.cli``, …) so this module
stays a table of contents. Registration imports only light modules: a command
imports the server's dependencies when it runs, never at start-up.
"""

from __future__ import annotations

import logging
import sys

import typer

from meterline import __version__

app = typer.Typer(
    name="meterline",
    help="Exact LLM usage metering on OpenTelemetry and ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help, as click formats it: typer's rich panels show "<bool>" for every flag
    # and read "[…]" in help text as markup (it vanished, leaving " .").
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"meterline {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register_all() -> None:
    from meterline import server_cli
    from meterline.aggregator import cli as aggregator_cli
    from meterline.config import cli as config_cli
    from meterline.instrumentation import cli as instrumentation_cli

    server_cli.register(app)
    config_cli.register(app)
    instrumentation_cli.register(app)
    try:  # the simulator and the demo need the server extra (starlette, uvicorn)
        from meterline.demo import cli as demo_cli
        from meterline.simulator import cli as simulator_cli
        from meterline.stripe_standin import cli as stripe_standin_cli
    except ImportError:
        pass
    else:
        simulator_cli.register(app)
        demo_cli.register(app)
        stripe_standin_cli.register(app)
    aggregator_cli.register(app)


_register_all()


def main() -> None:
    """Run the CLI; a usage error (unknown flag, bad value) is one line and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # typer's click exceptions: usage errors and the like
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]  # the help, as typer prints it
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        message = " ".join(exc.format_message().split())
        usage = ctx is not None and exc.exit_code == 2
        see = f" (see '{ctx.command_path} --help')" if usage else ""
        typer.echo(f"error: {message}{see}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
