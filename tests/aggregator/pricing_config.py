"""The pricing configuration shared by the pricing and invoice tests (issue 4's shape)."""

from __future__ import annotations

from pathlib import Path

CONFIG_YAML = """
currency: USD
models:
  - provider: openai
    model: gpt-4o
    per_million_tokens: {input: "2.50", cache_read: "1.25", output: "10.00"}
  - provider: openai
    model: gpt-4o
    effective_from: 2026-03-16
    per_million_tokens: {input: "2.00", cache_read: "1.00", output: "8.00"}
  - provider: openai
    model: o3
    per_million_tokens: {input: "2.00", cache_read: "0.50", output: "8.00", reasoning: "9.00"}
  - provider: anthropic
    match: "^claude-sonnet-4(-[0-9]{8})?$"
    per_million_tokens: {input: "3.00", cache_read: "0.30", cache_write: "3.75",
                         cache_write_1h: "6.00", output: "15.00"}
    tiers:
      - above_input_tokens: 200000
        per_million_tokens: {input: "6.00", output: "22.50"}
plans:
  default: {markup_percent: "0"}
  consumers:
    acme: {markup_percent: "20"}
    beta: {bill_failed_requests: true}
"""


def write_config(directory: Path, text: str = CONFIG_YAML) -> Path:
    path = directory / "meterline.yaml"
    path.write_text(text, encoding="utf-8")
    return path
