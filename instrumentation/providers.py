"""Which provider served a call: well-known hosts, configured hosts, else the API shape.

Contract: ``resolve(host, port, shape_provider)`` returns the ``gen_ai.provider.name`` value.
Configured hosts win over well-known ones, so a self-hosted gateway can be named:
``METERLINE_PROVIDER_HOSTS="llm.internal=openai,localhost:11434=ollama"`` (``host`` or
``host:port``, comma-separated). Unknown hosts fall back to the shape's provider
(OpenAI shapes → ``openai``, Messages → ``anthropic``, Gemini → ``gcp.gemini``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

logger = logging.getLogger(__name__)

ENV_PROVIDER_HOSTS = "METERLINE_PROVIDER_HOSTS"

WELL_KNOWN_HOSTS: dict[str, str] = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gcp.gemini",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral_ai",
    "api.together.xyz": "together_ai",
    "api.together.ai": "together_ai",
    "openrouter.ai": "openrouter",
    "api.deepseek.com": "deepseek",
    "api.x.ai": "x_ai",
    "api.perplexity.ai": "perplexity",
    "api.fireworks.ai": "fireworks_ai",
    "api.cohere.com": "cohere",
    "api.cerebras.ai": "cerebras",
}

# Suffix rules for hosts that carry a tenant or region in their name.
WELL_KNOWN_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".openai.azure.com", "azure.ai.openai"),
    (".cognitiveservices.azure.com", "azure.ai.openai"),
    (".services.ai.azure.com", "azure.ai.openai"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
)


def parse_provider_hosts(value: str | None) -> dict[str, str]:
    """Parse ``"host=provider,host:port=provider"``; malformed items are skipped."""
    hosts: dict[str, str] = {}
    for item in (value or "").split(","):
        host, sep, provider = item.partition("=")
        host, provider = host.strip().lower(), provider.strip()
        if sep and host and provider:
            hosts[host] = provider
        elif item.strip():
            logger.debug("ignoring malformed %s item %r", ENV_PROVIDER_HOSTS, item)
    return hosts


class ProviderResolver:
    """Maps a host to a provider name, caching each answer."""

    def __init__(self, configured: Mapping[str, str] | None = None) -> None:
        if configured is None:
            configured = parse_provider_hosts(os.environ.get(ENV_PROVIDER_HOSTS))
        self._configured = {k.lower(): v for k, v in configured.items()}
        self._cache: dict[tuple[str, int | None, str], str] = {}

    def resolve(self, host: str, port: int | None, shape_provider: str) -> str:
        key = (host, port, shape_provider)
        found = self._cache.get(key)
        if found is None:
            found = self._lookup(host.lower(), port, shape_provider)
            if len(self._cache) < 1024:
                self._cache[key] = found
        return found

    def _lookup(self, host: str, port: int | None, shape_provider: str) -> str:
        configured = self._configured
        if port is not None and f"{host}:{port}" in configured:
            return configured[f"{host}:{port}"]
        if host in configured:
            return configured[host]
        if host in WELL_KNOWN_HOSTS:
            return WELL_KNOWN_HOSTS[host]
        for suffix, provider in WELL_KNOWN_SUFFIXES:
            if host.endswith(suffix):
                return provider
        return shape_provider
