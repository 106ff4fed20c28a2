"""Settles and releases, sent by one background thread so the app never waits for them.

A settle only makes a budget less cautious (it replaces the worst case by the actual
usage), so sending it late never lets a call pass a limit. At interpreter exit the
pending ones are sent for at most ``EXIT_WAIT`` seconds; whatever is left (or lost to a
kill) expires on the aggregator after the reservation's TTL.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

EXIT_WAIT = 2.0

Job = Callable[[], None]


class Outbox:
    """A queue of jobs and the daemon thread that runs them, started on first use."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0

    def put(self, job: Job) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="meterline-budgets", daemon=True
                )
                self._thread.start()
        self._queue.put(job)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                logger.debug("meterline: a settle failed", exc_info=True)
            finally:
                with self._lock:
                    self._pending -= 1

    def flush(self, timeout: float = EXIT_WAIT) -> bool:
        """Wait until every job queued so far ran (at most ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._pending <= 0:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def _after_fork(self) -> None:
        # The thread does not exist in a forked child; its jobs belong to the parent.
        self._queue = queue.SimpleQueue()
        self._thread = None
        self._lock = threading.Lock()
        self._pending = 0


OUTBOX = Outbox()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=OUTBOX._after_fork)


def flush_at_exit() -> None:
    """The exit hook: send what is pending, bounded (runs after in-flight calls end)."""
    try:
        OUTBOX.flush(EXIT_WAIT)
    except Exception:
        logger.debug("meterline: flushing settles failed", exc_info=True)
