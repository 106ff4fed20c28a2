"""The ``checkpoint`` policy's user callback.

Registered in code with :func:`on_budget` (the last registration wins; ``None`` removes
it), else the first entry point of the group ``meterline.budget_checkpoint`` (loaded
once, when a checkpoint budget first refuses a call)::

    [project.entry-points."meterline.budget_checkpoint"]
    mine = "myapp.budgets:decide"

The callback gets a :class:`Checkpoint` and returns :data:`ALLOW` (send the call as it
is, without a reservation: the user accepts passing the budget), :data:`BLOCK` (raise
``meterline.BudgetExceeded``), or a ``dict``: the rewritten JSON request body, which is
reserved again (a rewritten request that still does not fit is blocked). A callback that
raises, or returns anything else, blocks the call (its error is logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from importlib.metadata import entry_points
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

ALLOW = "allow"
BLOCK = "block"
GROUP = "meterline.budget_checkpoint"


class Checkpoint(NamedTuple):
    """What the callback is asked about."""

    consumer: str
    feature: str | None
    provider: str
    model: str | None
    input_tokens: int
    """meterline's estimate of the request's input tokens."""
    max_tokens: int | None
    estimate: Decimal | None
    """The call's worst case in ``unit``."""
    unit: str | None
    budget: dict[str, Any]
    """The budget that refused it (limit, spent, reserved, remaining, period…)."""
    reason: str
    body: dict[str, Any]
    """A copy of the JSON request body (return a modified one to rewrite the call)."""


CheckpointCallback = Callable[[Checkpoint], Any]

_state: dict[str, Any] = {"code": None, "entry": None, "loaded": False}


def on_budget(callback: CheckpointCallback | None) -> None:
    """Register the callback of ``checkpoint`` budgets (``None``: unregister)."""
    if callback is not None and not callable(callback):
        raise TypeError(f"on_budget takes a callable, not {type(callback).__name__!r}")
    _state["code"] = callback


def current() -> CheckpointCallback | None:
    """The callback in force: the one registered in code, else the entry point's."""
    if _state["code"] is not None:
        return _state["code"]
    if not _state["loaded"]:
        _state["loaded"] = True
        try:
            found = sorted(entry_points(group=GROUP), key=lambda ep: ep.name)
            if found:
                if len(found) > 1:
                    logger.warning(
                        "meterline: several %s entry points (%s); using %r",
                        GROUP, ", ".join(ep.name for ep in found), found[0].name,
                    )  # fmt: skip
                _state["entry"] = found[0].load()
        except Exception:
            logger.warning("meterline: cannot load the %s entry point", GROUP, exc_info=True)
    return _state["entry"]
