"""Stop signals flush usage first, and the app still stops exactly as it would have.

:func:`install` (main thread only; elsewhere a no-op) hooks SIGTERM and SIGHUP — and
SIGINT only when it is ``SIG_DFL`` (Python's own ``KeyboardInterrupt`` handler is left
alone: an uncaught ``KeyboardInterrupt`` runs the exit hooks, which flush, and
``asyncio.run`` looks for that very handler). For each signal, per its disposition when
installing:

* ``SIG_IGN`` (or a handler set outside Python): left untouched — an app that ignores
  SIGTERM still ignores it;
* ``SIG_DFL``: on the signal, calls still in flight are ended (:func:`before_death`), and
  every registered processor delivers its spool for at most its ``shutdown_timeout``;
  then the default disposition is restored and the signal re-raised, so the process dies
  of that signal (the exit status the parent sees is unchanged; exit hooks do not run, as
  without meterline);
* the app's own handler (installed before meterline): the same bounded flush, then the
  app's handler is called — it decides what happens next (its exit code, or none).

A handler the app installs *after* meterline replaces ours, as it would replace the
default; usage is on disk already, and exit hooks deliver it.
A second signal while the first is being handled skips the flush.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class Flushable(Protocol):
    @property
    def shutdown_timeout(self) -> float: ...

    def persist(self, *, lock_timeout: float = 1.0) -> None: ...

    def deliver_now(self, deadline: float, *, lock_timeout: float = 1.0) -> Any: ...


_processors: weakref.WeakSet[Any] = weakref.WeakSet()
_previous: dict[int, Any] = {}
_before_death: list[Callable[[], Any]] = []
_handling = False


def handling() -> bool:
    """Whether the calling thread is running the stop-signal handler (the main thread)."""
    return _handling and threading.current_thread() is threading.main_thread()


def before_death(hook: Callable[[], Any]) -> None:
    """Run ``hook`` first when a signal is about to kill the process (``SIG_DFL`` path).

    The instrumentation ends its calls still in flight there, so they are written too.
    """
    if hook not in _before_death:
        _before_death.append(hook)


def _signals() -> list[tuple[signal.Signals, bool]]:
    """``(signal, only_if_default)`` pairs of this platform."""
    out = [(signal.SIGTERM, False), (signal.SIGINT, True)]
    if hasattr(signal, "SIGHUP"):
        out.append((signal.SIGHUP, False))
    return out


def install(processor: Flushable) -> None:
    """Flush ``processor`` on the stop signals (see the module docstring)."""
    _processors.add(processor)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, only_if_default in _signals():
        if sig in _previous:
            continue
        try:
            current = signal.getsignal(sig)
        except (ValueError, OSError):
            continue
        if current is None or current is signal.SIG_IGN:
            continue
        if only_if_default and current is not signal.SIG_DFL:
            continue
        try:
            signal.signal(sig, _handler)
        except (ValueError, OSError):
            logger.debug("meterline: cannot handle signal %s", sig, exc_info=True)
            continue
        _previous[sig] = current


def uninstall() -> None:
    """Put back the dispositions :func:`install` replaced (where still ours)."""
    for sig, previous in list(_previous.items()):
        try:
            if signal.getsignal(sig) is _handler:
                signal.signal(sig, previous)
        except (ValueError, OSError):
            continue
        del _previous[sig]


def _handler(signum: int, frame: FrameType | None) -> Any:
    global _handling
    previous = _previous.get(signum, signal.SIG_DFL)
    if not _handling:
        _handling = True
        try:
            if not callable(previous):
                for hook in _before_death:
                    hook()
            _flush()
        except Exception:  # never fail the app's stop
            logger.debug("meterline: flush on signal %s failed", signum, exc_info=True)
        finally:
            _handling = False
    if callable(previous):
        return previous(signum, frame)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return None


def _flush() -> None:
    processors = list(_processors)
    for p in processors:
        p.persist(lock_timeout=0.5)
    for p in processors:
        p.deliver_now(time.monotonic() + p.shutdown_timeout, lock_timeout=0.5)
