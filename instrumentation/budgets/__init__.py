"""The budget guard (issue 11 §3): enforcement in the app, switched on by environment.

``METERLINE_BUDGETS=enforce`` with ``METERLINE_API_URL`` (the aggregator) and
``METERLINE_API_KEY`` (a key with the ``reserve`` scope) makes every metered LLM call
reserve its worst case before it is sent (:mod:`._guard` states the contract). The one
piece of code an app may add is a callback for ``checkpoint`` budgets
(:func:`on_budget`, or the entry point group ``meterline.budget_checkpoint``).
"""

from __future__ import annotations

from meterline.instrumentation.budgets._checkpoint import (
    ALLOW,
    BLOCK,
    Checkpoint,
    CheckpointCallback,
    on_budget,
)

__all__ = ["ALLOW", "BLOCK", "Checkpoint", "CheckpointCallback", "on_budget"]
