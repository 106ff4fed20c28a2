"""``meterline stripe sync|setup|reconcile|status|push-invoices``: usage to Stripe meters,
exactly once, and (``push-invoices``) finalised invoices as Stripe invoice items.

Through the API when ``METERLINE_API_URL`` is set (admin key in ``METERLINE_API_KEY``;
the server holds ``STRIPE_API_KEY``), else on the store (``--data-dir`` /
``--clickhouse-url``) with ``STRIPE_API_KEY`` and ``METERLINE_STRIPE_API_BASE`` /
``METERLINE_STRIPE_METER_EVENTS_BASE`` from this process's environment. ``sync``
prints a one-line summary (``--format json``: everything) and exits 1 when an event ended
without a definite answer, was refused or throttled, or its customer is missing in Stripe
(one line on stderr); ``setup`` exits 1 when a meter could not be created or a mapped
customer is missing in Stripe; ``reconcile`` exits 1 on a difference (consumers without a
customer are listed apart, outside it); ``push-invoices`` exits 1 while a request's
outcome is unknown (run it again).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from meterline.aggregator.cli import (
    ClickhouseUrl,
    CommandError,
    Config,
    Database,
    DataDir,
    _emit,
    _Local,
    _Remote,
    _run,
    table,
)

_RECONCILE = ("consumer", "customer", "meter", "expected", "accepted", "difference", "ok")
_ITEMS = ("consumer", "meter", "window", "kind", "value", "reason")
_FORMAT = "table or json"
_PUSHED = ("consumer", "customer", "kind", "amount", "currency", "description")


def _config(b: _Local) -> Any:
    from meterline.aggregator.stripe import load_stripe_config

    config = load_stripe_config(b.settings.config)
    if config is None or not config.meters:
        where = b.settings.config or "no configuration file (--config / METERLINE_CONFIG)"
        raise CommandError(f"{where}: no stripe: section with meters; see docs/stripe.md")
    return config


def _render_sync(d: dict[str, Any]) -> str:
    from meterline.aggregator.stripe import SyncSummary

    lines = []
    if d["dry_run"] and d["would_send"]:
        lines += [
            "Would send:",
            table(d["would_send"], ("consumer", "customer", "meter", "window", "kind", "value")),
            "",
        ]
    if d["held"]:
        lines += ["Held (unpriced):", table(d["held"], ("consumer", "meter", "window", "tokens")),
                  ""]  # fmt: skip
    if d["reported"]:
        lines += ["Reported (not sent):", table(d["reported"], _ITEMS), ""]
    summary = SyncSummary(**{k: d[k] for k in ("api", "dry_run", "started_at")})
    for key in ("sent", "corrections", "cancels", "resent", "unknown", "rejected", "throttled",
                "held", "reported", "would_send"):  # fmt: skip
        setattr(summary, key, d[key])
    return "\n".join([*lines, summary.line()])


def register(app: typer.Typer) -> None:
    """Add ``stripe`` to the ``meterline`` CLI."""
    group = typer.Typer(help="Usage to Stripe Billing meters, exactly once (docs/stripe.md).",
                        no_args_is_help=True)  # fmt: skip
    app.add_typer(group, name="stripe")
    register_push(group)

    @group.command("sync")
    def sync_cmd(
        api: Annotated[str, typer.Option("--api", help="v1, v2 (streams) or auto")] = "auto",
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Send nothing; show it.")] = False,
        fmt: Annotated[str, typer.Option("--format", help=_FORMAT)] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Send every closed window's usage Stripe does not hold yet (resumes after a crash)."""
        if api not in ("v1", "v2", "auto"):
            raise typer.BadParameter(f"{api!r}: use v1, v2 or auto", param_hint="--api")

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.stripe import sync

            return sync(b.store, _config(b), pricing=b.pricing, api=api,
                        dry_run=dry_run).to_dict()  # fmt: skip

        def remote(r: _Remote) -> dict[str, Any]:
            return r.call("POST", "/v1/stripe/sync", {"api": api, "dry_run": dry_run and "true"})

        data = _run((data_dir, clickhouse_url, database, config), remote, local)
        _emit(data, fmt, _render_sync, lambda d: (d["would_send"], _ITEMS))
        if not data.get("ok", True):
            typer.echo(f"error: {data['error']}", err=True)
            raise typer.Exit(1)

    @group.command("status")
    def status_cmd(
        fmt: Annotated[str, typer.Option("--format", help=_FORMAT)] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Last run, windows pending, held and reported items, lag."""

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.stripe import status

            return status(b.store, _config(b), pricing=b.pricing)

        data = _run((data_dir, clickhouse_url, database, config),
                    lambda r: r.call("GET", "/v1/stripe/status"), local)  # fmt: skip

        def render(d: dict[str, Any]) -> str:
            last = d["last_run"]
            head = [
                f"closed until {d['closed_until']}; pending events {d['pending_events']}; "
                f"lag {d['lag_seconds']:.0f}s; unresolved {d['unresolved']}",
                "last run: "
                + (
                    f"{last['started_at']} ({last['api']}) sent {last['sent']}, "
                    f"corrections {last['corrections']}"
                    if last
                    else "never"
                ),
            ]
            if last and last.get("error"):
                head.append(f"last run incomplete: {last['error']}")
            if d["held"]:
                head += ["", "Held:", table(d["held"], ("consumer", "meter", "window", "tokens"))]
            if d["reported"]:
                head += ["", "Reported:", table(d["reported"], _ITEMS)]
            return "\n".join(head)

        _emit(data, fmt, render, lambda d: (d["pending"], _ITEMS))

    @group.command("reconcile")
    def reconcile_cmd(
        period: Annotated[str, typer.Option("--period", help="UTC month, YYYY-MM.")],
        check_stripe: Annotated[
            bool,
            typer.Option(
                "--check-stripe",
                help="Also compare with what Stripe's meters hold (event summaries).",
            ),
        ] = False,
        fmt: Annotated[str, typer.Option("--format", help=_FORMAT)] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Invoices against what Stripe accepted (by the ledger); exit 1 on a difference."""

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.stripe import reconcile_report

            return reconcile_report(b.store, b.pricing, _config(b), period,
                                    check_stripe=check_stripe)  # fmt: skip

        params = {"period": period, "check_stripe": check_stripe and "true"}
        data = _run(
            (data_dir, clickhouse_url, database, config),
            lambda r: r.call("GET", "/v1/stripe/reconcile", params),
            local,
        )
        columns = (*_RECONCILE[:5], "in_stripe", *_RECONCILE[5:]) if check_stripe else _RECONCILE

        def render(d: dict[str, Any]) -> str:
            out = [table(d["rows"], columns)]
            if d.get("not_billed"):
                out += ["", "Not billed through Stripe (no Stripe customer; not checked):",
                        table(d["not_billed"], ("consumer", "meter", "expected"))]  # fmt: skip
            return "\n".join(out)

        _emit(data, fmt, render, lambda d: (d["rows"], _RECONCILE))
        if not data["ok"]:
            typer.echo(f"error: Stripe and the invoices of {period} differ", err=True)
            raise typer.Exit(1)

    @group.command("setup")
    def setup_cmd(
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Create the configured meters Stripe lacks (by event name); check the customers."""

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.stripe import setup

            return setup(b.store, _config(b))

        data = _run((data_dir, clickhouse_url, database, config),
                    lambda r: r.call("POST", "/v1/stripe/setup"), local)  # fmt: skip
        out = [table(data["meters"], ("event_name", "action"))]
        if data["customers"]:
            out += ["", table(data["customers"], ("customer", "consumers", "status"))]
        typer.echo("\n".join(out))
        if not data["ok"]:
            typer.echo(f"error: {data['error']}", err=True)
            raise typer.Exit(1)


def _render_push(d: dict[str, Any]) -> str:
    from meterline.aggregator.stripe import PushSummary

    lines = []
    if d["pushed"]:
        title = "Would push:" if d["dry_run"] else "Pushed:"
        lines += [title, table(d["pushed"], _PUSHED), ""]
    if d["reported"]:
        lines += ["Reported (not pushed):", table(d["reported"], ("consumer", "total", "reason")),
                  ""]  # fmt: skip
    for key in ("unknown", "rejected"):
        if d[key]:
            lines += [f"{key.capitalize()}:", table(d[key], ("consumer", "customer", "answer")), ""]
    summary = PushSummary(d["period"], d["revision"], d["dry_run"])
    for key in ("pushed", "drafts", "unchanged", "recovered", "reported", "unknown", "rejected"):
        setattr(summary, key, d[key])
    summary.zero = d.get("zero", [])
    return "\n".join([*lines, summary.line()])


def register_push(group: typer.Typer) -> None:
    """Add ``push-invoices`` to the ``stripe`` group."""

    @group.command("push-invoices")
    def push_invoices_cmd(
        period: Annotated[str, typer.Option("--period", help="A finalised UTC month, YYYY-MM.")],
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Send nothing; list what would be pushed.")
        ] = False,
        fmt: Annotated[str, typer.Option("--format", help=_FORMAT)] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Finalised invoices → items on Stripe draft invoices, once (resumes after a crash)."""

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.stripe import load_stripe_config, push_invoices

            stripe_config = load_stripe_config(b.settings.config)
            return push_invoices(
                b.store, b.pricing, stripe_config, period, dry_run=dry_run
            ).to_dict()

        def remote(r: _Remote) -> dict[str, Any]:
            params = {"period": period, "dry_run": dry_run and "true"}
            return r.call("POST", "/v1/stripe/push-invoices", params)

        data = _run((data_dir, clickhouse_url, database, config), remote, local)
        _emit(data, fmt, _render_push, lambda d: (d["pushed"], _PUSHED))
        if not data["ok"]:
            line = data.get("error") or "stripe push-invoices incomplete"
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(1)
