"""Raising ``meterline.BudgetExceeded`` / ``RateLimited`` so they surface from SDK calls.

The guard raises from the transport (``Client.send``). The SDKs wrap what a transport
raises: anthropic 2.x turns any exception into ``APIConnectionError`` and retries it
(with back-off sleeps); openai 3.x does so for httpx errors. Both let their *own* base
error through untouched and unretried (openai: "Propagate OpenAIErrors as-is";
anthropic: "SDK-originated errors already carry their own type"). So the instance
raised belongs to a subclass of the meterline exception and of the base error of every
SDK already imported (``openai.OpenAIError``, ``anthropic.AnthropicError``): the app
catches it as ``meterline.BudgetExceeded`` (and an ``except anthropic.AnthropicError``
that handles failed calls handles it too). Without an SDK loaded it is the plain class.
"""

from __future__ import annotations

import sys
from typing import Any

_SDK_BASES = (("openai", "OpenAIError"), ("anthropic", "AnthropicError"))
_made: dict[tuple[type, tuple[type, ...]], type] = {}


def surfacing(cls: type[Any]) -> type[Any]:
    """``cls``, or a cached subclass of it and of the loaded SDKs' base errors."""
    bases: list[type] = []
    for module_name, attr in _SDK_BASES:
        module = sys.modules.get(module_name)
        base = getattr(module, attr, None) if module is not None else None
        if isinstance(base, type) and issubclass(base, Exception) and base not in bases:
            bases.append(base)
    if not bases:
        return cls
    key = (cls, tuple(bases))
    made = _made.get(key)
    if made is None:
        try:
            made = type(
                cls.__name__,
                (cls, *bases),
                {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
            )
        except TypeError:  # an SDK base with an incompatible layout: the plain class
            made = cls
        _made[key] = made
    return made
