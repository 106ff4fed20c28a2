"""A local stand-in for LLM providers: test metering without spending money.

The simulator speaks enough of the OpenAI, Anthropic and Gemini HTTP APIs for the
real ``openai`` and ``anthropic`` SDKs (sync, async, streamed) to work against it
unchanged: point ``base_url`` at it (``http://HOST:PORT/v1`` for OpenAI,
``http://HOST:PORT`` for Anthropic). Run it with ``meterline simulator --port 8765``,
or in-process::

    from meterline.simulator import start
    with start() as sim:               # port 0: a free loopback port
        client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test")
        ...
        sim.ledger.totals()            # exact usage it returned

Usage is realistic and deterministic: input tokens are ``ceil(len(text) / 4)`` over a
canonical serialisation of the prompt; visible output has one word per token, its
length drawn from the request (model, prompt, ``seed``) and :class:`SimulatorConfig`'s
seed and capped by the request's output budget; reasoning models (``o*``, ``gpt-5*``,
Anthropic ``thinking``, Gemini 2.5+) add reasoning tokens; prompt caches behave as the
providers document (OpenAI automatic prefix caching, Anthropic ``cache_control``
breakpoints with 5-minute and 1-hour TTLs). Response ids are unique.

Request headers that steer a call (all optional):

``x-simulator-fail: 429x1,500x1``
    fail attempts by status (``STATUS`` = every attempt, ``STATUSxN`` = the next N);
    attempts are counted with the SDKs' ``x-stainless-retry-count``. Error bodies are
    each provider's JSON; 429s carry ``retry-after`` and ``retry-after-ms``.
``x-simulator-retry-after-ms: 10``
    the retry delay to ask for (also on 5xx).
``x-simulator-output-tokens: N`` / ``x-simulator-reasoning-tokens: N``
    force the counts (still capped by the request's budget).
``x-simulator-chunk-delay-ms: N``
    pause between streamed events.
``x-simulator-cut-after: N``
    drop the connection after N streamed events, mid-body.
``x-simulator-tag: any``
    recorded on the ledger entry, to group calls in assertions.

The ledger (``GET /_simulator/ledger``, or ``SimulatorServer.ledger``) holds one entry
per response or failed attempt with the provider-shaped usage and the same counts
normalised as meterline stores them, and its totals use ``/v1/usage``'s keys.

Not covered: real tokenizers (counts are a heuristic), model quality, tool calls,
structured outputs, images/audio out, stop sequences, batches, files, realtime and
assistants APIs, per-key rate limits (429s are only injected), Vertex AI paths.
Everything is in memory: a restart forgets the ledger and the caches.
"""

from __future__ import annotations

from meterline.simulator._state import SimulatorConfig
from meterline.simulator.app import create_app
from meterline.simulator.ledger import Ledger, LedgerEntry
from meterline.simulator.server import SimulatorServer, serve, start

__all__ = [
    "Ledger",
    "LedgerEntry",
    "SimulatorConfig",
    "SimulatorServer",
    "create_app",
    "serve",
    "start",
]
