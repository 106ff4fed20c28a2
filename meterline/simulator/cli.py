"""``meterline simulator``: serve the provider simulator in the foreground."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add ``simulator`` to the ``meterline`` CLI."""

    @app.command("simulator")
    def simulator(
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
        port: int = typer.Option(8765, "--port", help="Port; 0 picks a free one."),
        seed: int = typer.Option(0, "--seed", help="Seed of the deterministic outputs."),
        cache_min_tokens: int = typer.Option(
            1024, "--cache-min-tokens", help="Shortest cacheable prompt prefix, in tokens."
        ),
        retry_after_ms: int = typer.Option(
            1000, "--retry-after-ms", help="Delay that 429 responses ask for."
        ),
        chunk_delay_ms: int = typer.Option(
            0, "--chunk-delay-ms", help="Pause between streamed events."
        ),
        api_key: str | None = typer.Option(
            None, "--api-key", envvar="METERLINE_SIMULATOR_API_KEY", help="Require this key."
        ),
    ) -> None:
        """Serve a local OpenAI-, Anthropic- and Gemini-compatible LLM simulator.

        Deterministic usage (caching, reasoning, streaming), failures on demand
        (x-simulator-fail: 429x1), and the exact usage of every response at
        GET /_simulator/ledger. No tokens are spent.
        """
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

        serve(config, host=host, port=port, on_ready=ready)
