"""CLI commands of the instrumentation (``meterline instrument``, ``meterline spool``).

``meterline instrument -- CMD ...`` runs CMD with meterline's start-up hook first on
``PYTHONPATH`` (the mechanism ``opentelemetry-instrument`` uses), so a Python CMD is
metered with no code change. The OTLP endpoint defaults to a local meterline
(``http://127.0.0.1:4318``) unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``--endpoint``) says otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_ENDPOINT = "http://127.0.0.1:4318"


def _bootstrap_dir() -> str:
    from meterline.instrumentation import _bootstrap

    return str(Path(_bootstrap.__file__).resolve().parent)


def instrument_env(
    environ: dict[str, str], *, endpoint: str | None = None, service_name: str | None = None
) -> dict[str, str]:
    """The environment ``meterline instrument`` gives its command."""
    env = dict(environ)
    paths = [_bootstrap_dir(), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    env.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", DEFAULT_ENDPOINT)
    env.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if service_name:
        env["OTEL_SERVICE_NAME"] = service_name
    return env


def register(app: typer.Typer) -> None:
    """Add the instrumentation's commands to the ``meterline`` CLI."""

    @app.command(
        "instrument",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def instrument_command(
        ctx: typer.Context,
        endpoint: Annotated[
            str | None,
            typer.Option("--endpoint", help="OTLP/HTTP base URL (default: a local meterline)."),
        ] = None,
        service_name: Annotated[
            str | None, typer.Option("--service-name", help="OTEL_SERVICE_NAME.")
        ] = None,
    ) -> None:
        """Run a Python command with zero-code metering: meterline instrument -- CMD ..."""
        command = list(ctx.args)
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            typer.echo("usage: meterline instrument -- CMD [ARGS]...", err=True)
            raise typer.Exit(2)
        env = instrument_env(dict(os.environ), endpoint=endpoint, service_name=service_name)
        executable = shutil.which(command[0], path=env.get("PATH")) or command[0]
        if os.name == "posix":
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                os.execvpe(executable, command, env)
            except OSError as exc:
                typer.echo(f"meterline instrument: cannot run {command[0]!r}: {exc}", err=True)
                raise typer.Exit(127) from exc
        raise typer.Exit(subprocess.call([executable, *command[1:]], env=env))

    spool_app = typer.Typer(help="The on-disk queue of usage not yet delivered.")
    app.add_typer(spool_app, name="spool")

    @spool_app.command("flush")
    def spool_flush(
        endpoint: Annotated[
            str | None,
            typer.Option("--endpoint", help="OTLP/HTTP traces URL (default: as the apps use)."),
        ] = None,
        directory: Annotated[Path | None, typer.Option("--dir", help="Spool directory.")] = None,
    ) -> None:
        """Deliver spooled usage now (each batch deleted only once acknowledged).

        Exits 1 if batches remain (the collector is down or failing). Batches the
        collector refused as malformed are set aside as ``.rejected``, never resent.
        """
        from meterline.instrumentation.delivery.flush import flush_spool
        from meterline.instrumentation.delivery.sender import OtlpHttpSender
        from meterline.instrumentation.delivery.spool import Spool

        spool = Spool(directory)
        sender = OtlpHttpSender(endpoint)
        if sender.invalid is not None:
            typer.echo(f"meterline spool flush: {sender.invalid}; use --endpoint", err=True)
            raise typer.Exit(2)
        try:
            report = flush_spool(spool, sender)
        finally:
            sender.close()
            spool.close()
        typer.echo(
            f"delivered {report.sent_files} batches to {sender.endpoint}; "
            f"{report.remaining} remaining"
        )
        if report.rejected_spans:
            typer.echo(f"the collector rejected {report.rejected_spans} invalid span(s)")
        if report.rejected_files:
            typer.echo(
                f"{report.rejected_files} batch(es) refused by the collector, "
                f"kept in {spool.directory} as *.rejected"
            )
        status = spool.status()
        if status.corrupt:
            typer.echo(f"{status.corrupt} torn file(s) set aside in {spool.directory} (*.corrupt)")
        if report.failure is not None:
            typer.echo(f"stopped: {report.failure.describe()}", err=True)
        if report.remaining:
            raise typer.Exit(1)

    @spool_app.command("status")
    def spool_status(
        directory: Annotated[Path | None, typer.Option("--dir", help="Spool directory.")] = None,
    ) -> None:
        """Show how much usage waits in the spool."""
        from meterline.instrumentation.delivery.spool import Spool

        spool = Spool(directory)
        s = spool.status()
        typer.echo(
            f"{spool.directory}: {s.pending} batches, {s.pending_bytes} bytes; "
            f"{s.in_flight} being sent, {s.rejected} rejected, {s.corrupt} corrupt"
        )
