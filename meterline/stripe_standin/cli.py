"""``meterline stripe-standin``: serve the local Stripe stand-in in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer


def stripe_standin(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 12111,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", help="A secret key to accept (repeatable)."),
    ] = None,
    customer: Annotated[
        list[str] | None,
        typer.Option("--customer", help="A customer id that exists from the start (repeatable)."),
    ] = None,
    meter: Annotated[
        list[str] | None,
        typer.Option("--meter", help="Event name of a sum meter to create (repeatable)."),
    ] = None,
    meter_event_latency: Annotated[
        float, typer.Option(help="Seconds each v1 meter event takes (makes overlaps visible).")
    ] = 0.0,
) -> None:
    """Serve a local Stripe that checks requests the way Stripe does.

    Meter events (v1 and v2 streams), adjustments, meters, customers, invoice items and
    invoices, with idempotency, de-duplication, a settable clock and faults on demand
    (POST /_standin/faults). State at GET /_standin/state. Nothing reaches Stripe.
    """
    from meterline.stripe_standin import StandinConfig
    from meterline.stripe_standin.server import serve

    config = StandinConfig(
        api_keys=tuple(api_key or ("sk_test_standin",)),
        customers=tuple(customer or ()),
        meters=tuple(meter or ()),
        meter_event_latency=meter_event_latency,
    )

    def ready(bound: int) -> None:
        url = f"http://{host}:{bound}"
        typer.echo(f"meterline stripe stand-in listening on {url}")
        typer.echo(f"  METERLINE_STRIPE_API_BASE={url}")
        typer.echo(f"  METERLINE_STRIPE_METER_EVENTS_BASE={url}")
        typer.echo(f"  STRIPE_API_KEY={config.api_keys[0]}")
        typer.echo(f"  state: {url}/_standin/state")

    serve(config, host=host, port=port, on_ready=ready)


def register(app: typer.Typer) -> None:
    """Add ``stripe-standin`` to the ``meterline`` CLI."""
    app.command("stripe-standin")(stripe_standin)
