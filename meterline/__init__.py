"""meterline: exact LLM usage metering on OpenTelemetry and ClickHouse.

This package is the shared kernel (configuration, store, CLI). Importing it imports
nothing of the server's dependencies.
"""

import os as _os

__version__ = "0.1.0"

# In a source checkout, `meterline.instrumentation`, `.collector` and `.aggregator` live
# in top-level folders (setup.py maps them when installing). Let a checkout import them
# without installing too, e.g. `python -c "import meterline.instrumentation"` at its root.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "setup.py")) and _os.path.isdir(
    _os.path.join(_checkout, "instrumentation")
):
    __path__.append(_checkout)  # type: ignore[name-defined]
from meterline.errors import BudgetExceeded, RateLimited  # noqa: E402

__all__ = ["BudgetExceeded", "RateLimited", "__version__", "estimate"]


def estimate(**kwargs):  # type: ignore[no-untyped-def]
    """What an LLM call would cost before it is sent (:func:`meterline.estimates.estimate`:
    the arguments and the answer of ``POST /v1/estimate``, docs/estimate.md)."""
    from meterline.estimates import estimate as _estimate

    return _estimate(**kwargs)
