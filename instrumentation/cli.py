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
from typing import Annotated, Any

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
            typer.Option(
                "--endpoint",
                help="OTLP/HTTP base URL, as for 'meterline instrument' (default: as the "
                "apps use).",
            ),
        ] = None,
        directory: Annotated[Path | None, typer.Option("--dir", help="Spool directory.")] = None,
    ) -> None:
        """Deliver spooled usage now (each batch deleted only once acknowledged).

        Exits 1 if batches remain (the collector is down or failing). Batches the
        collector refused as malformed are set aside as ``.rejected``, never resent.
        When nothing is delivered, says why.
        """
        from meterline.instrumentation.delivery.flush import flush_spool
        from meterline.instrumentation.delivery.sender import OtlpHttpSender, traces_url
        from meterline.instrumentation.delivery.spool import Spool

        spool = Spool(directory)
        sender = OtlpHttpSender(traces_url(endpoint) if endpoint else None)
        if sender.invalid is not None:
            typer.echo(f"meterline spool flush: {sender.invalid}; use --endpoint", err=True)
            raise typer.Exit(2)
        before = spool.status()
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
            why = _failure_reason(report.failure, sender.endpoint, spool.directory)
            lead = "nothing delivered" if not report.sent_files else "stopped"
            typer.echo(f"{lead}: {why}", err=True)
        elif not report.sent_files:
            why = _idle_reason(before, status, report, spool.directory)
            typer.echo(f"nothing delivered: {why}")
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


def _failure_reason(failure: Any, endpoint: str, directory: Path) -> str:
    """Why a POST failed, and what to do, for a person (usage stays in the spool)."""
    code = failure.http_status
    kept = f"usage kept in {directory} for the next flush"
    if code is None:
        return f"the collector at {endpoint} did not answer ({failure.message}); {kept}"
    if code in (401, 403):
        return (
            f"the collector at {endpoint} refused the credentials ({failure.describe()}): set "
            f"OTEL_EXPORTER_OTLP_HEADERS='Authorization=Bearer%20<token>'; {kept}"
        )
    if code in (404, 405, 415):
        return (
            f"{endpoint} is not an OTLP/HTTP traces endpoint ({failure.describe()}): "
            f"--endpoint takes the collector's base URL, e.g. {DEFAULT_ENDPOINT}; {kept}"
        )
    if failure.retryable:
        return f"the collector at {endpoint} is busy or unavailable ({failure.describe()}); {kept}"
    return f"the collector at {endpoint} failed ({failure.describe()}); {kept}"


def _idle_reason(before: Any, after: Any, report: Any, directory: Path) -> str:
    """Why a flush without a failed POST delivered nothing."""
    if report.rejected_files:
        return (
            f"the collector refused every batch as malformed; kept in {directory} as "
            "*.rejected, not resent"
        )
    if after.corrupt > before.corrupt:
        return f"the spool held only torn files, set aside in {directory} as *.corrupt"
    busy = after.in_flight or before.in_flight
    if busy:
        return f"{busy} batch(es) in {directory} are being sent by another process"
    return f"the spool at {directory} is empty"
