"""CLI commands of the aggregator: ``invoice``, ``export``, ``prices show|update``,
``finalize``, ``reprice``, ``keys create|list|revoke`` (:mod:`.cli_keys`),
``stripe sync|setup|reconcile|status`` (:mod:`.cli_stripe`), ``grafana push|write``
(:mod:`.cli_grafana`). Imports stay light (server modules load inside commands).

Each command talks to a running server when ``METERLINE_API_URL`` is set (key in
``METERLINE_API_KEY``), otherwise opens the store itself (``--data-dir`` or
``--clickhouse-url``; the same ``METERLINE_*`` variables as ``serve``) and says which on
stderr. A store that does not exist is an error (never an empty invoice from a new one);
only ``prices update`` creates one, and only when it is named. Output is a readable
table, or ``--format json|csv``. A 401 from the server while ``METERLINE_API_KEY`` is
unset says so (and that ``METERLINE_ADMIN_KEY`` is not read).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from meterline.aggregator._export import EXPORT_COLUMNS, export_rows
from meterline.aggregator._instants import parse_instant


class CommandError(Exception):
    """A command failed with a message for the user."""


# --- where the data comes from -------------------------------------------------------


class _Remote:
    """A running server's API (``METERLINE_API_URL``), over the standard library."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        self.key = key

    def call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        import urllib.error
        import urllib.parse
        import urllib.request

        query = {k: v for k, v in (params or {}).items() if v is not None and v is not False}
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if method in ("GET", "HEAD") else json.dumps(body or {}).encode()
        request = urllib.request.Request(url, method=method, data=data)
        if data is not None:  # the open API refuses state changes of any other type
            request.add_header("Content-Type", "application/json")
        if self.key:
            request.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail", exc.reason)
            except ValueError:
                detail = exc.reason
            if isinstance(detail, list):  # FastAPI's validation errors
                detail = "; ".join(str(d.get("msg", d)) for d in detail)
            if exc.code == 401 and not self.key:
                detail += _missing_key_hint()
            raise CommandError(f"{method} {url}: {exc.code} {detail}") from None
        except urllib.error.URLError as exc:
            raise CommandError(f"cannot reach the server at {self.url}: {exc.reason}") from None


def _missing_key_hint() -> str:
    if os.environ.get("METERLINE_ADMIN_KEY"):
        return (" (METERLINE_API_KEY is not set: the CLI sends that variable's key, "
                "not METERLINE_ADMIN_KEY; set METERLINE_API_KEY)")  # fmt: skip
    return " (set METERLINE_API_KEY to the server's admin key or a consumer key)"


_NO_STORE = (
    "name the store with --data-dir (or METERLINE_DATA_DIR), --clickhouse-url, or set "
    "METERLINE_API_URL to a running server"
)


class _Local:
    """The store opened in this process.

    It says on stderr which store it opened (one line). Only a command that writes
    (``creates=True``: ``prices update``) may create a store, and only one named
    explicitly: a mistyped or missing ``--data-dir`` never yields an empty invoice.
    """

    def __init__(self, data_dir: Path | None, clickhouse_url: str | None, database: str | None,
                 config: Path | None, *, creates: bool = False) -> None:  # fmt: skip
        from meterline.settings import settings_from_flags

        self.settings = settings_from_flags(
            data_dir=data_dir, clickhouse_url=clickhouse_url, database=database, config=config
        )
        self.creates = creates
        self._origin = _origin(self.settings, data_dir=data_dir, clickhouse_url=clickhouse_url)
        self._store: Any = None
        self._pricing: Any = None

    def _where(self) -> str:
        if self.settings.clickhouse_url:
            return f"the ClickHouse server {_without_password(self.settings.clickhouse_url)}"
        return f"the embedded store {Path(self.settings.data_dir).resolve()}"

    def _check_embedded_dir(self) -> None:
        path = Path(self.settings.data_dir).resolve()
        if (path / "metadata").is_dir():
            return
        if self.creates and self._origin != "default":
            return
        what = "does not exist" if not path.exists() else "is not a meterline store"
        raise CommandError(f"{path} ({self._origin}) {what}: {_NO_STORE}")

    @property
    def store(self) -> Any:
        if self._store is None:
            from meterline.server import open_configured_store
            from meterline.store import StoreError

            if not self.settings.clickhouse_url:
                self._check_embedded_dir()
            try:
                store = open_configured_store(self.settings)
            except StoreError as exc:
                if self.settings.clickhouse_url:
                    raise
                raise CommandError(
                    f"{exc}\n(an embedded store is opened by one process only: if "
                    "'meterline serve' runs on it, set METERLINE_API_URL to its API)"
                ) from None
            _, found = store.query(
                "SELECT 1 FROM system.databases WHERE name = {d:String}", {"d": store.database}
            )
            if not found and not (self.creates and self._origin != "default"):
                store.close()
                raise CommandError(
                    f"{self._where()} ({self._origin}) has no database {store.database!r}: "
                    + (_NO_STORE if self._origin == "default" else "check --database")
                )
            typer.echo(
                f"meterline: using {self._where()}, database {store.database} ({self._origin})",
                err=True,
            )
            store.migrate()
            self._store = store
        return self._store

    @property
    def pricing(self) -> Any:
        if self._pricing is None:
            from meterline.aggregator.invoices import load_store_pricing

            self._pricing = load_store_pricing(self.store, self.settings.config)
        return self._pricing

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _origin(settings: Any, *, data_dir: Path | None, clickhouse_url: str | None) -> str:
    """Where the store's location came from, as the user would name it."""
    if settings.clickhouse_url:
        return "--clickhouse-url" if clickhouse_url else "METERLINE_CLICKHOUSE_URL"
    if data_dir is not None:
        return "--data-dir"
    if any(k.upper() == "METERLINE_DATA_DIR" for k in os.environ):
        return "METERLINE_DATA_DIR"
    return "default"


def _without_password(url: str) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


def _run(
    ctx: Any,
    remote: Callable[[_Remote], Any],
    local: Callable[[_Local], Any],
    *,
    creates: bool = False,
) -> Any:
    """Run against the server when ``METERLINE_API_URL`` is set, else the local store
    (``creates``: the command may create a store that was named explicitly)."""
    url = os.environ.get("METERLINE_API_URL")
    try:
        if url:
            return remote(_Remote(url, os.environ.get("METERLINE_API_KEY")))
        backend = _Local(*ctx, creates=creates)
        try:
            return local(backend)
        finally:
            backend.close()
    except CommandError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:
        from meterline.errors import MeterlineError

        if isinstance(exc, MeterlineError | ValueError):
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        raise


# --- output ------------------------------------------------------------------------


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A readable fixed-width table; numbers right-aligned."""
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = [all(_numeric(row[i]) for row in cells) for i in range(len(columns))]

    def fmt(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([fmt(columns), fmt(["-" * w for w in widths]), *map(fmt, cells)])


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")


def _emit(
    data: Any, fmt: str, render: Callable[[Any], str], csv_rows: Callable[[Any], tuple]
) -> None:
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
    elif fmt == "csv":
        rows, columns = csv_rows(data)
        typer.echo(_csv(rows, columns))
    elif fmt == "table":
        typer.echo(render(data))
    else:
        typer.echo(f"error: unknown --format {fmt!r}, allowed: table, json, csv", err=True)
        raise typer.Exit(2)


def render_invoice(inv: dict[str, Any], status: str = "") -> str:
    head = f"Invoice {inv['consumer'] or '(unattributed)'}  {inv['period']}  {inv['currency']}"
    lines = [head + (f"  [{status}]" if status else ""), ""]
    lines.append(table(inv["lines"], ("provider", "model", "token_type", "quantity",
                                      "unit_price_per_million", "amount")))  # fmt: skip
    width = max(len(inv["subtotal"]), len(inv["total"]), len(inv["markup"]))
    lines += [
        "",
        f"{'subtotal':>12}  {inv['subtotal']:>{width}}",
        f"{'markup':>12}  {inv['markup']:>{width}}",
        f"{'total':>12}  {inv['total']:>{width}}  {inv['currency']}",
    ]
    usage_columns = ("provider", "model", "requests", "input_tokens", "output_tokens")
    if inv["unpriced"]:
        lines += ["", "Unpriced (no price known; not billed, not $0):"]
        lines.append(table(inv["unpriced"], usage_columns))
    if inv.get("invalid"):
        lines += ["", "Invalid usage (reported token counts the store rejected; not billed):"]
        lines.append(table(inv["invalid"], ("provider", "model", "reason", "requests")))
    lines.append(f"\nFailed requests: {inv['failed_requests']}")
    if inv.get("known") is False:
        lines.append(
            f"\nNote: no usage was ever recorded for consumer {inv['consumer']!r} (in any "
            "period): check the id. This is not a bill."
        )
    if inv.get("failed"):
        lines += ["", "Failed calls not billed (the plan does not bill them):"]
        lines.append(table(inv["failed"], usage_columns))
    return "\n".join(lines)


# --- commands ----------------------------------------------------------------------

_FORMAT_HELP = "table, json or csv"


def _instant(text: str) -> datetime:
    """A ``--from``/``--to``/``--at`` value: ISO 8601 (offset or ``Z``; none means UTC),
    in the range the store holds, else a usage error (click names the option)."""
    try:
        return parse_instant(text, name="")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


_ISO = "ISO 8601, e.g. 2026-03-01T00:00:00Z (no offset: UTC)"
From = Annotated[datetime | None, typer.Option("--from", parser=_instant, help=f"Start, {_ISO}.")]
To = Annotated[
    datetime | None,
    typer.Option("--to", parser=_instant, help=f"End (exclusive), {_ISO}."),
]

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Embedded store directory [env METERLINE_DATA_DIR]."),
]
ClickhouseUrl = Annotated[
    str | None, typer.Option("--clickhouse-url", help="A ClickHouse server, http(s)://…")
]
Database = Annotated[str | None, typer.Option("--database", help="Database of the tables.")]
Config = Annotated[
    Path | None, typer.Option("--config", help="YAML configuration [env METERLINE_CONFIG].")
]


def register(app: typer.Typer) -> None:
    """Add the aggregator's commands to the ``meterline`` CLI."""

    @app.command("invoice")
    def invoice(
        consumer: Annotated[str, typer.Argument(help="The consumer id.")],
        period: Annotated[str | None, typer.Option("--period", help="UTC month, YYYY-MM.")] = None,
        from_: From = None,
        to: To = None,
        fmt: Annotated[str, typer.Option("--format", help=_FORMAT_HELP)] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Show a consumer's invoice for a month (or --from/--to)."""
        import urllib.parse

        params = {
            "period": period,
            "from": from_ and from_.isoformat(),
            "to": to and to.isoformat(),
        }

        def remote(api: _Remote) -> dict[str, Any]:
            return api.call("GET", f"/v1/invoices/{urllib.parse.quote(consumer, safe='')}", params)

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.invoices import consumer_known, get_invoices, resolve_period
            from meterline.aggregator.tenancy import Scope

            view = get_invoices(b.store, b.pricing, resolve_period(period, from_, to),
                                scope=Scope.ALL, consumer=consumer)[consumer]  # fmt: skip
            return {**view.invoice.to_dict(), "known": consumer_known(b.store, view.invoice)}

        data = _run((data_dir, clickhouse_url, database, config), remote, local)
        _emit(data, fmt, render_invoice, lambda d: (export_rows(d), EXPORT_COLUMNS))

    @app.command("export")
    def export(
        period: Annotated[str | None, typer.Option("--period", help="UTC month, YYYY-MM.")] = None,
        from_: From = None,
        to: To = None,
        fmt: Annotated[str, typer.Option("--format", help="csv, json or table")] = "csv",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Every consumer's invoice as rows for a period (the billing export): priced
        lines, markup, adjustments, and unpriced or failed usage (no amount), by status."""
        params = {"period": period, "from": from_ and from_.isoformat(),
                  "to": to and to.isoformat(), "format": "json"}  # fmt: skip

        def remote(api: _Remote) -> list[dict[str, Any]]:
            return api.call("GET", "/v1/export", params)["rows"]

        def local(b: _Local) -> list[dict[str, Any]]:
            from meterline.aggregator.invoices import get_invoices, iter_export_rows, resolve_period
            from meterline.aggregator.tenancy import Scope

            views = get_invoices(b.store, b.pricing, resolve_period(period, from_, to),
                                 scope=Scope.ALL)  # fmt: skip
            return list(iter_export_rows(views.values()))

        rows = _run((data_dir, clickhouse_url, database, config), remote, local)
        _emit(rows, fmt, lambda r: table(r, EXPORT_COLUMNS), lambda r: (r, EXPORT_COLUMNS))

    prices = typer.Typer(help="The prices in use: show them, or update the catalogue.",
                         no_args_is_help=True)  # fmt: skip
    app.add_typer(prices, name="prices")

    @prices.command("show")
    def prices_show(
        provider: Annotated[str | None, typer.Option("--provider")] = None,
        model: Annotated[str | None, typer.Option("--model", help="One model's price.")] = None,
        source: Annotated[str | None, typer.Option("--source", help="config or catalogue")] = None,
        at: Annotated[
            datetime | None,
            typer.Option("--at", parser=_instant, help=f"In force at, {_ISO}."),
        ] = None,
        fmt: Annotated[str, typer.Option("--format", help=_FORMAT_HELP)] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Configured prices and the catalogue's (per million tokens)."""
        params = {"provider": provider, "model": model, "source": source,
                  "at": at and at.isoformat()}  # fmt: skip

        def local(b: _Local) -> dict[str, Any]:
            from datetime import UTC

            from meterline.aggregator.pricing import price_table

            when = at or datetime.now(UTC)
            return price_table(b.pricing, at=when, provider=provider, model=model, source=source)

        data = _run((data_dir, clickhouse_url, database, config),
                    lambda api: api.call("GET", "/v1/prices", params), local)  # fmt: skip
        columns = ("provider", "model", "source", "effective_from", "input", "cache_read",
                   "cache_write", "cache_write_1h", "output", "reasoning", "tiers")  # fmt: skip
        rows = [_flat_price(p) for p in data["prices"]]

        def render(d: dict[str, Any]) -> str:
            head = f"Prices per million tokens, {d['currency']}, at {d['at']}"
            head += f"; catalogue: {d['catalogue'] or 'not used'}"
            return head + "\n\n" + table(rows, columns)

        _emit(data, fmt, render, lambda d: (rows, columns))

    @prices.command("update")
    def prices_update(
        fmt: Annotated[str, typer.Option("--format", help=_FORMAT_HELP)] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Fetch genai-prices' published prices (from the configuration's catalogue.url),
        store them, report what changed."""

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.invoices import update_catalogue

            url = b.pricing.config.catalogue_url
            return update_catalogue(b.store, b.pricing.catalogue, url=url).to_dict()

        data = _run(
            (data_dir, clickhouse_url, database, config),
            lambda api: api.call("POST", "/v1/prices/update"),
            local,
            creates=True,
        )
        rows = [
            {"provider": c["provider"], "model": c["model"],
             "change": "added" if c["before"] is None else "removed" if c["after"] is None
             else "changed"}
            for c in data["changes"]
        ]  # fmt: skip

        def render(d: dict[str, Any]) -> str:
            head = f"Stored prices from {d['source']} at {d['fetched_at']}: "
            head += f"{len(rows)} model(s) changed"
            return head + ("\n\n" + table(rows, ("provider", "model", "change")) if rows else "")

        _emit(data, fmt, render, lambda d: (rows, ("provider", "model", "change")))

    @app.command("finalize")
    def finalize_cmd(
        period: Annotated[str, typer.Option("--period", help="UTC month, YYYY-MM.")],
        allow_open: Annotated[
            bool,
            typer.Option("--allow-open", help="Finalise a month not yet ended (tests)."),
        ] = False,
        fmt: Annotated[str, typer.Option("--format", help=_FORMAT_HELP)] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Store every consumer's invoice of a month as final, once the month ended
        (plus stripe.grace, default 1h, for late usage)."""

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.invoices import finalize

            final, invoices = finalize(b.store, b.pricing, period, allow_open=allow_open)
            return {"period": final.period, "revision": final.revision,
                    "invoices": [i.to_dict() for i in invoices.values()]}  # fmt: skip

        data = _run(
            (data_dir, clickhouse_url, database, config),
            lambda api: api.call("POST", f"/v1/periods/{period}/finalize",
                                 {"allow_open": allow_open and "true"}),
            local,
        )  # fmt: skip
        rows = [{"consumer": i["consumer"], "total": i["total"], "currency": i["currency"]}
                for i in data["invoices"]]  # fmt: skip

        def render(d: dict[str, Any]) -> str:
            head = f"Finalised {d['period']} (revision {d['revision']}): {len(rows)} invoice(s)"
            return head + "\n\n" + table(rows, ("consumer", "total", "currency"))

        _emit(data, fmt, render, lambda d: (rows, ("consumer", "total", "currency")))

    @app.command("reprice")
    def reprice_cmd(
        period: Annotated[str, typer.Option("--period", help="A finalised UTC month, YYYY-MM.")],
        force: Annotated[bool, typer.Option("--force", help="Re-issue instead.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show it.")] = False,
        fmt: Annotated[str, typer.Option("--format", help=_FORMAT_HELP)] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Re-rate a finalised month at current prices: record the difference as
        adjustments (or re-issue with --force)."""

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.invoices import reprice

            return reprice(b.store, b.pricing, period, force=force, dry_run=dry_run).to_dict()

        data = _run(
            (data_dir, clickhouse_url, database, config),
            lambda api: api.call("POST", f"/v1/periods/{period}/reprice",
                                 {"force": force and "true", "dry_run": dry_run and "true"}),
            local,
        )  # fmt: skip
        columns = ("consumer", "billed", "repriced", "difference")

        def render(d: dict[str, Any]) -> str:
            changed = sum(1 for c in d["consumers"] if _nonzero(c["difference"]))
            action = {"adjusted": "differences recorded as adjustments",
                      "reissued": f"invoices re-issued as revision {d['revision']}",
                      "none": "nothing recorded"}[d["action"]]  # fmt: skip
            head = f"Repriced {d['period']} ({d['currency']}): {changed} changed; {action}"
            return head + "\n\n" + table(d["consumers"], columns)

        _emit(data, fmt, render, lambda d: (d["consumers"], columns))

    from meterline.aggregator import cli_grafana, cli_keys, cli_stripe

    cli_keys.register(app)
    cli_stripe.register(app)
    cli_grafana.register(app)


def _nonzero(text: str) -> bool:
    from decimal import Decimal

    return Decimal(text) != 0


def _flat_price(price: dict[str, Any]) -> dict[str, Any]:
    row = {k: price.get(k) or "" for k in ("provider", "model", "source", "effective_from")}
    row.update(price.get("per_million_tokens", {}))
    tiers = price.get("tiers") or []
    row["tiers"] = "; ".join(
        f">{t['above_input_tokens']}: "
        + ", ".join(f"{k} {v}" for k, v in t["per_million_tokens"].items())
        for t in tiers
    )
    return row
