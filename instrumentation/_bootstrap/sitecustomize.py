"""Runs at interpreter start-up under ``meterline instrument``: meters the process.

Then loads the ``sitecustomize`` this one shadows, if any, so the environment's own
start-up hook still runs. Never raises: a broken set-up must not stop the app.
"""

import importlib.util
import logging
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))

try:
    from meterline.instrumentation import instrument

    instrument()
except Exception:  # pragma: no cover - never break the app
    logging.getLogger("meterline.instrumentation").debug(
        "meterline: could not instrument at start-up", exc_info=True
    )

try:
    _rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    _spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
    if _spec is not None and _spec.loader is not None:
        _module = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
except Exception:  # pragma: no cover
    logging.getLogger("meterline.instrumentation").debug(
        "meterline: the shadowed sitecustomize failed", exc_info=True
    )
