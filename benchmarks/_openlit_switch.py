"""OpenLIT, initialised the way its 1.45 API wants, and a switch to turn it on and off.

``openlit.init`` no longer takes a tracer: it reuses the global SDK ``TracerProvider`` when
one is set, so the benchmark's shared pipeline is made global first. Only OpenLIT's own
``openai`` instrumentor is kept (every other one in its map is disabled; the OTel httpx
span its defaults would add is measured separately as ``otel-httpx``), with no metrics, no
events (an SDK ``LoggerProvider`` without processors is made global first: OpenLIT's own
would print to the console), no prompt/response content, and prices from a local file (by
default it downloads them at start-up, which fails here). That is OpenLIT at its lightest.

OpenLIT's ``_uninstrument`` does nothing, so :func:`init` finds the ``wrapt`` wrappers its
``openai`` instrumentor put on the SDK's classes and returns a switch that swaps each class
attribute between the wrapper and the original: the benchmark can then interleave OpenLIT's
blocks with the others'. Known limit: only wrappers on classes of the ``openai`` package
are found (all that its ``openai`` instrumentor patches in 1.45); the switch refuses to
work if it finds none.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

# Per 1k tokens, OpenLIT's pricing.json format; the benchmark's accuracy check prices the
# same calls with this table to see how OpenLIT treats cached tokens.
PRICES = {"promptPrice": 0.0025, "completionPrice": 0.01, "cacheReadPrice": 0.00125}


def init(provider: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """Initialise OpenLIT on ``provider``; returns ``(enable, disable)``, left disabled."""
    from opentelemetry import _logs, trace
    from opentelemetry.sdk._logs import LoggerProvider

    trace.set_tracer_provider(provider)
    _logs.set_logger_provider(LoggerProvider())

    import openlit
    from openlit._instrumentors import MODULE_NAME_MAP

    prices = os.path.join(tempfile.mkdtemp(), "pricing.json")
    with open(prices, "w") as fh:
        json.dump({"chat": {"gpt-4o": PRICES, "gpt-4o-2024-08-06": PRICES}}, fh)
    openlit.init(
        disabled_instrumentors=[name for name in MODULE_NAME_MAP if name != "openai"],
        disable_metrics=True,
        disable_events=True,
        capture_message_content=False,
        pricing_json=prices,
    )
    patches = _wrappers()
    if not patches:
        raise SystemExit("openlit.init() patched no openai class: its API changed again")

    def enable() -> None:
        for cls, attr, wrapper, _original in patches:
            setattr(cls, attr, wrapper)

    def disable() -> None:
        for cls, attr, _wrapper, original in patches:
            setattr(cls, attr, original)

    disable()
    return enable, disable


def _wrappers() -> list[tuple[type, str, Any, Any]]:
    """(class, attribute, OpenLIT's wrapper, the original) on every class of ``openai``."""
    import wrapt

    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "openai" or name.startswith("openai.")):
            continue
        for cls in list(vars(module).values()):
            if not isinstance(cls, type) or cls.__module__ != name:
                continue
            for attr, value in list(vars(cls).items()):
                if not isinstance(value, wrapt.FunctionWrapper):
                    continue
                wrapper_module = getattr(value._self_wrapper, "__module__", "") or ""
                if wrapper_module.startswith("openlit."):
                    found.append((cls, attr, value, value.__wrapped__))
    return found
