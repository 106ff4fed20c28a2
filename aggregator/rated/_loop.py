"""The rating loop of ``meterline serve``: keeps ``rated_usage`` current as usage arrives.

Every ``interval`` seconds it rates the months that are not current (usage or pricing
changed). It never sleeps less than ``3 ×`` its last run's duration, so rating takes at
most about a quarter of one core however big a month is. Lag (usage acknowledged → in
``rated_usage``): at most ``interval + max(interval, 3 × run) + run``; the figures are in
docs/rated-usage.md. API readers do not wait for the loop: they rate what is stale
themselves (:func:`~meterline.aggregator.rated.ensure_rated`).

A failed run is logged and retried on the next tick; nothing a run leaves half-done is
ever read (see :mod:`meterline.aggregator.rated._run`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from meterline.aggregator.pricing import Pricing
from meterline.aggregator.rated._run import ensure_rated, roll_up_months
from meterline.store import Store

logger = logging.getLogger(__name__)


class RatingLoop:
    """A daemon thread that calls :func:`ensure_rated` for every month."""

    def __init__(
        self,
        store: Store,
        pricing: Callable[[], Pricing],
        *,
        interval: float = 5.0,
        on_rated: Callable[[], None] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> None:
        self.store = store
        self.range = (start, end)
        """The months it keeps current (``None``: open; ``meterline serve``: every month)."""
        self.pricing = pricing
        """Returns the pricing in force (it changes on ``prices update``)."""
        self.interval = interval
        self.on_rated = on_rated
        """Called after a tick that rated something (the alert loop checks crossings)."""
        self.last_run_seconds = 0.0
        """Duration of the newest tick that rated something."""
        self._rolled_up = False
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="meterline-rating", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the run in progress (a run is safe to abandon, but finishing it
        keeps its work)."""
        self._stop.set()
        self._thread.join(timeout)

    def tick(self) -> float:
        """One pass over every month; returns its duration in seconds."""
        started = time.perf_counter()
        runs = ensure_rated(self.store, self.pricing(), *self.range)
        if not self._rolled_up:  # months rated before the monthly sums existed
            roll_up_months(self.store, *self.range)
            self._rolled_up = True
        seconds = time.perf_counter() - started
        if runs:
            self.last_run_seconds = seconds
            if self.on_rated is not None:
                self.on_rated()
        return seconds

    def _main(self) -> None:
        while not self._stop.wait(max(self.interval, 3 * self.last_run_seconds)):
            try:
                self.tick()
                self.last_error = None
            except Exception as exc:  # keep rating: the next tick retries
                if str(exc) != self.last_error:  # once per distinct failure, not every tick
                    logger.warning("rating failed (retried every tick): %s", exc, exc_info=True)
                self.last_error = str(exc)
