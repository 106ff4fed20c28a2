"""``meterline simulator``: serve the provider simulator in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer


def simulator(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8765,
    seed: Annotated[int, typer.Option(help="Seed of the deterministic outputs.")] = 0,
    cache_min_tokens: Annotated[
        int, typer.Option(help="Shortest cacheable prompt prefix, in tokens.")
    ] = 1024,
    retry_after_ms: Annotated[int, typer.Option(help="Delay that 429 responses ask for.")] = 1000,
    chunk_delay_ms: Annotated[int, typer.Option(help="Pause between streamed events.")] = 0,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="METERLINE_SIMULATOR_API_KEY", help="Require this API key."),
    ] = None,
) -> None:
    """Serve a local OpenAI-, Anthropic- and Gemini-compatible LLM simulator.

    Deterministic usage (caching, reasoning, streaming), failures on demand
    (x-simulator-fail: 429x1), and the exact usage of every response at
    GET /_simulator/ledger. No tokens are spent.
    """
    from meterline.listen import ListenError
    from meterline.simulator import SimulatorConfig
    from meterline.simulator.server import serve

    config = SimulatorConfig(
        seed=seed,
        cache_min_tokens=cache_min_tokens,
        retry_after_ms=retry_after_ms,
        chunk_delay_ms=chunk_delay_ms,
        api_key=api_key,
    )

    def ready(bound: int) -> None:
        url = f"http://{host}:{bound}"
        typer.echo(f"meterline simulator listening on {url}")
        typer.echo(f"  OPENAI_BASE_URL={url}/v1")
        typer.echo(f"  ANTHROPIC_BASE_URL={url}")
        typer.echo(f"  ledger: {url}/_simulator/ledger")

    try:
        serve(config, host=host, port=port, on_ready=ready)
    except ListenError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add ``simulator`` to the ``meterline`` CLI."""
    app.command("simulator")(simulator)
