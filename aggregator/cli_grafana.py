"""``meterline grafana push|write``: the dashboards into a running Grafana, or as files.

``push --url URL`` installs the data source and the dashboards through Grafana's HTTP API
(token from ``GRAFANA_TOKEN``; :mod:`meterline.aggregator.grafana._push`). The dashboards
come from the running server when ``METERLINE_API_URL`` is set (``GET
/v1/grafana/dashboards/{uid}``: its database and currency), else from the same
``METERLINE_*`` settings and configuration file as ``serve`` (the store is not opened).
The data source points at ``--datasource-url`` — the address *Grafana* reaches
ClickHouse-HTTP at — with the password of ``METERLINE_CLICKHOUSE_HTTP_PASSWORD`` (else
the admin key, as ``serve`` does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from meterline.aggregator.cli import (
    ClickhouseUrl,
    CommandError,
    Config,
    Database,
    _Remote,
)


def _local_dashboards(
    clickhouse_url: str | None, database: str | None, config: Path | None
) -> tuple[list[dict[str, Any]], Any]:
    from urllib.parse import urlsplit

    from meterline.aggregator.budgets import load_budgets_config
    from meterline.aggregator.grafana import build_dashboards
    from meterline.aggregator.pricing import pricing_config
    from meterline.config import load_config
    from meterline.settings import settings_from_flags

    settings = settings_from_flags(clickhouse_url=clickhouse_url, database=database, config=config)
    name = settings.database
    if name is None and settings.clickhouse_url:
        name = urlsplit(settings.clickhouse_url).path.strip("/") or None
    pricing = pricing_config(load_config(settings.config))
    budgets = load_budgets_config(settings.config, currency=pricing.currency)
    docs = build_dashboards(
        database=name or "meterline",
        currency=pricing.currency,
        minor_units=pricing.minor_units,
        datasource_uid=settings.grafana_datasource_uid,
        budgets=budgets.limits,
    )
    return docs, settings


def _remote_dashboards(api: _Remote) -> list[dict[str, Any]]:
    listed = api.call("GET", "/v1/grafana/dashboards")["dashboards"]
    return [api.call("GET", d["url"]) for d in listed]


def register(app: typer.Typer) -> None:
    """Add ``grafana`` to the ``meterline`` CLI."""
    grafana = typer.Typer(help="Grafana dashboards: push to a Grafana, or write as files.",
                          no_args_is_help=True)  # fmt: skip
    app.add_typer(grafana, name="grafana")

    @grafana.command("push")
    def push_command(
        url: Annotated[str, typer.Option("--url", help="Grafana's address, http(s)://host:3000.")],
        datasource_url: Annotated[
            str | None,
            typer.Option(
                "--datasource-url",
                help="Where Grafana reaches ClickHouse over HTTP (default: this machine's "
                ":8123 as serve binds it, or --clickhouse-url; from a container: "
                "http://host.docker.internal:8123).",
            ),
        ] = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Install the meterline data source and dashboards in a running Grafana (token in
        GRAFANA_TOKEN). Safe to run again: it updates what it installed."""
        from urllib.parse import urlsplit

        from meterline.aggregator.grafana import GrafanaError, datasource_body, push

        try:
            token = os.environ.get("GRAFANA_TOKEN")
            if not token:
                raise CommandError(
                    "set GRAFANA_TOKEN to a Grafana service account token (Admin role)"
                )
            api_url = os.environ.get("METERLINE_API_URL")
            docs, settings = _local_dashboards(clickhouse_url, database, config)
            if api_url:
                docs = _remote_dashboards(_Remote(api_url, os.environ.get("METERLINE_API_KEY")))
            db = next(v["query"] for v in docs[0]["templating"]["list"] if v["name"] == "database")
            password = settings.clickhouse_http_password or (
                settings.admin_keys[0] if settings.admin_keys else None
            )
            username = "meterline"
            target = datasource_url
            if target is None and settings.clickhouse_url:
                parts = urlsplit(settings.clickhouse_url)
                username = parts.username or "default"
                password = parts.password
                target = f"{parts.scheme}://{parts.hostname}:{parts.port or 8123}"
            if target is None:  # serve's own :8123, as a client on this machine reaches it
                host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
                host = f"[{host}]" if ":" in host else host
                target = f"http://{host}:{settings.clickhouse_http_port}"
            body = datasource_body(
                target,
                database=db,
                password=password,
                username=username,
                uid=settings.grafana_datasource_uid,
            )
            result = push(url, token, datasource=body, dashboards=docs)
        except (CommandError, GrafanaError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"folder meterline: {result.folder}")
        typer.echo(f"data source {result.datasource_uid}: {result.datasource} ({target})")
        for answer in result.dashboards:
            typer.echo(f"dashboard {answer.get('uid')}: version {answer.get('version')}"
                       f" {url.rstrip('/')}{answer.get('url', '')}")  # fmt: skip

    @grafana.command("write")
    def write_command(
        directory: Annotated[Path, typer.Argument(help="Where to write <uid>.json files.")],
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Write the dashboards as JSON files (for Grafana's file provisioning)."""
        docs, _ = _local_dashboards(clickhouse_url, database, config)
        directory.mkdir(parents=True, exist_ok=True)
        for doc in docs:
            path = directory / f"{doc['uid'].removeprefix('meterline-')}.json"
            path.write_text(dashboard_text(doc), encoding="utf-8")
            typer.echo(str(path))


def dashboard_text(doc: dict[str, Any]) -> str:
    """A dashboard as the repository's files hold it."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
