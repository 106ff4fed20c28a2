"""CLI commands that run or migrate the server: ``serve`` and ``migrate``.

Start-up errors are one line on stderr, never a traceback (README, "Errors at start"):
exit 2 when what was given is wrong (a flag or ``METERLINE_*`` value, the configuration
file), exit 1 when the machine refuses it (a port in use, the data directory held by
another process or not writable, the store unreachable).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

DataDir = Annotated[
    Path | None,
    typer.Option(help="Embedded store directory [env METERLINE_DATA_DIR; ./meterline-data]."),
]
ClickHouseURL = Annotated[
    str | None,
    typer.Option(help="ClickHouse server, http(s)://user:pass@host:port/db "
                 "[env METERLINE_CLICKHOUSE_URL]."),
]  # fmt: skip
Database = Annotated[str | None, typer.Option(help="Database of the tables [meterline].")]


def _settings(**given: Any) -> Any:
    from meterline.settings import SettingsError, settings_from_flags

    try:
        return settings_from_flags(**given)
    except SettingsError as exc:
        fail(exc, code=2)


def fail(exc: BaseException, *, code: int) -> NoReturn:
    """Print ``error: <one line>`` on stderr and exit with ``code``."""
    typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
    raise typer.Exit(code)


def serve(
    data_dir: DataDir = None,
    clickhouse_url: ClickHouseURL = None,
    database: Database = None,
    config: Annotated[Path | None, typer.Option(help="YAML configuration file.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1].")] = None,
    otlp_http_port: Annotated[int | None, typer.Option(help="OTLP/HTTP port [4318].")] = None,
    otlp_grpc_port: Annotated[int | None, typer.Option(help="OTLP/gRPC port [4317].")] = None,
    api_port: Annotated[int | None, typer.Option(help="API port [8080].")] = None,
    clickhouse_http_port: Annotated[
        int | None, typer.Option(help="ClickHouse-HTTP port for Grafana [8123].")
    ] = None,
    keep_all_spans: Annotated[
        bool | None, typer.Option("--keep-all-spans", help="Store non-GenAI spans too.")
    ] = None,
    fsync: Annotated[
        bool | None, typer.Option("--fsync", help="fsync every insert (power-loss safe).")
    ] = None,
    rating_interval_s: Annotated[
        float | None,
        typer.Option(help="Seconds between rating runs of changed usage/prices (0: off) [5]."),
    ] = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the endpoints as JSON here once listening.")
    ] = None,
    allow_open_api: Annotated[
        bool | None,
        typer.Option(
            "--allow-open-api",
            help="Serve the API without METERLINE_ADMIN_KEY on a non-loopback --host.",
        ),
    ] = None,
) -> None:
    """Run the collector, the API and the ClickHouse-HTTP endpoint (0 = any free port).

    SIGHUP reloads the configuration file (an invalid one is logged and not used).
    """
    from meterline.config import ConfigError, load_config
    from meterline.listen import ListenError
    from meterline.server import serve as run
    from meterline.store import StoreError

    settings = _settings(
        data_dir=data_dir,
        clickhouse_url=clickhouse_url,
        database=database,
        config=config,
        host=host,
        otlp_http_port=otlp_http_port,
        otlp_grpc_port=otlp_grpc_port,
        api_port=api_port,
        clickhouse_http_port=clickhouse_http_port,
        keep_all_spans=keep_all_spans,
        fsync=fsync,
        rating_interval_s=rating_interval_s,
        allow_open_api=allow_open_api,
    )
    from meterline.server import ServeRefused

    try:
        loaded = load_config(settings.config)
    except ConfigError as exc:
        fail(exc, code=2)
    try:
        asyncio.run(run(settings, config=loaded, ready_file=ready_file))
    except ServeRefused as exc:  # unsafe as given (an open API off loopback)
        fail(exc, code=2)
    except (ListenError, StoreError) as exc:
        fail(exc, code=1)


def migrate(
    data_dir: DataDir = None,
    clickhouse_url: ClickHouseURL = None,
    database: Database = None,
) -> None:
    """Create or upgrade the schema (idempotent)."""
    from meterline.server import open_configured_store
    from meterline.store import StoreError

    try:
        store = open_configured_store(
            _settings(data_dir=data_dir, clickhouse_url=clickhouse_url, database=database)
        )
    except StoreError as exc:
        fail(exc, code=1)
    applied = store.migrate()
    typer.echo(f"applied migrations: {applied}" if applied else "schema is up to date")
    store.close()


def register(app: typer.Typer) -> None:
    """Add the server's commands to the ``meterline`` CLI."""
    app.command()(serve)
    app.command()(migrate)
